"""A Paho MQTT (Python) client driven by Herald's end-to-end tests: the same interface as
mqttjs.mjs. Options as one JSON argument, commands as JSON lines on stdin, events as JSON lines
on stdout.

Options: url, username, password, clientId, version (4 or 5), clean (default true), keepalive
(default 60), ca (PEM file for wss), noAck (never acknowledge QoS 1 messages), properties
(5.0 CONNECT: sessionExpiryInterval, receiveMaximum, maximumPacketSize), subscribe
({topic: qos}, sent once connected), reconnect (reconnect every second after a lost connection;
default false).
Commands: {"subscribe": {topic: qos}}, {"unsubscribe": [topic]},
{"publish": {"topic", "payload", "qos"}}, {"end": true}.
Events: ready, connect, suback, unsuback, message, published, disconnect, close.
Paho reports 3.1.1 return codes as 5.0 reason codes (4 -> 0x86): `code` is that number.
"""

import json
import ssl
import sys
import threading
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

opts = json.loads(sys.argv[1] if len(sys.argv) > 1 else "{}")
lock = threading.Lock()


def out(event, **fields):
    with lock:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()


def code_of(rc):
    return getattr(rc, "value", rc)


version = opts.get("version", 4)
v5 = version == 5
url = urlsplit(opts["url"])
client = mqtt.Client(
    mqtt.CallbackAPIVersion.VERSION2,
    client_id=opts.get("clientId", ""),
    clean_session=None if v5 else opts.get("clean", True),
    protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
    transport="websockets",
    reconnect_on_failure=bool(opts.get("reconnect")),
    manual_ack=bool(opts.get("noAck")),
)
client.reconnect_delay_set(min_delay=1, max_delay=1)
client.ws_set_options(path=url.path + ("?" + url.query if url.query else ""))
if url.scheme == "wss":
    client.tls_set(ca_certs=opts.get("ca"), cert_reqs=ssl.CERT_REQUIRED)
if opts.get("username") is not None or opts.get("password") is not None:
    client.username_pw_set(opts.get("username"), opts.get("password"))


def on_connect(c, userdata, flags, rc, properties):
    props = properties.json() if (v5 and properties is not None) else None
    out("connect", sessionPresent=bool(flags.session_present), code=code_of(rc), properties=props)
    if code_of(rc) == 0 and opts.get("subscribe"):
        subscribe(opts["subscribe"])


def on_message(c, userdata, msg):
    out(
        "message",
        topic=msg.topic,
        payload=msg.payload.decode("utf-8", "replace"),
        qos=msg.qos,
        dup=bool(msg.dup),
        retain=bool(msg.retain),
        messageId=msg.mid if msg.qos > 0 else None,
    )


def on_subscribe(c, userdata, mid, rcs, properties):
    out("suback", codes=[code_of(r) for r in rcs])


def on_unsubscribe(c, userdata, mid, rcs, properties):
    out("unsuback", codes=[code_of(r) for r in rcs] if rcs else None)


def on_publish(c, userdata, mid, rc, properties):
    out("published", code=code_of(rc))


def on_disconnect(c, userdata, flags, rc, properties):
    reason = None
    if properties is not None and hasattr(properties, "ReasonString"):
        reason = properties.ReasonString
    out("disconnect", code=code_of(rc), reason=reason)
    out("close")


def subscribe(topics):
    client.subscribe([(t, q) for t, q in topics.items()])


client.on_connect = on_connect
client.on_message = on_message
client.on_subscribe = on_subscribe
client.on_unsubscribe = on_unsubscribe
client.on_publish = on_publish
client.on_disconnect = on_disconnect

connect_props = None
if v5:
    connect_props = Properties(PacketTypes.CONNECT)
    names = {
        "sessionExpiryInterval": "SessionExpiryInterval",
        "receiveMaximum": "ReceiveMaximum",
        "maximumPacketSize": "MaximumPacketSize",
    }
    for k, v in (opts.get("properties") or {}).items():
        setattr(connect_props, names[k], v)

out("ready")
try:
    client.connect(
        url.hostname,
        url.port or (443 if url.scheme == "wss" else 80),
        keepalive=opts.get("keepalive", 60),
        clean_start=opts.get("clean", True) if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
        properties=connect_props,
    )
except Exception as e:  # the test reads the failure as an event
    out("error", message=str(e))
    out("close")
    sys.exit(0)
client.loop_start()

for line in sys.stdin:
    cmd = json.loads(line)
    if "subscribe" in cmd:
        subscribe(cmd["subscribe"])
    elif "unsubscribe" in cmd:
        client.unsubscribe(cmd["unsubscribe"])
    elif "publish" in cmd:
        p = cmd["publish"]
        client.publish(p["topic"], p.get("payload", ""), qos=p.get("qos", 0))
    elif "end" in cmd:
        client.disconnect()
        client.loop_stop()
        out("ended")
        sys.exit(0)
