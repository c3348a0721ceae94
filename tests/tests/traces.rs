//! OpenTelemetry traces over OTLP: a publish through a router, the registry, the bus and an
//! edge is one trace (spans received by a local OTLP/gRPC receiver, tonic with the
//! opentelemetry-proto types); the envelope carries a trace context only from a router that
//! traces.

use std::sync::Arc;

use herald_core::proto::bus::Envelope;
use herald_tests::cluster::Backends;
use herald_tests::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use tokio::sync::Mutex;
use tokio_stream::StreamExt as _;

/// A span as received, with the `service.instance.id` of the node that sent it.
#[derive(Debug, Clone)]
struct Received {
    node: String,
    span: Span,
}

impl Received {
    fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                AnyValue::StringValue(s) => s.clone(),
                AnyValue::IntValue(i) => i.to_string(),
                other => format!("{other:?}"),
            })
    }
}

/// The OTLP receiver: keeps every span exported to it.
#[derive(Default, Clone)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().await;
        for rs in request.into_inner().resource_spans {
            let node = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.instance.id")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(Received {
                        node: node.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Starts the receiver on a loopback port; returns it and its `http://` endpoint.
async fn receiver() -> (Receiver, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let r = Receiver::default();
    let service = TraceServiceServer::new(r.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (r, format!("http://{addr}"))
}

/// A token of alpha's `sub`, a member of `news`.
fn in_news(sub: &str) -> String {
    let mut c = claims("alpha", sub);
    c["groups"] = serde_json::json!(["news"]);
    hs256("alpha-secret-0123456789abcdef0123456789", None, &c)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_is_one_trace_from_router_through_bus_to_edge() {
    let (spans, endpoint) = receiver().await;
    let backends = Backends::start().await;
    let traced = |b: HeraldBuilder| {
        b.telemetry("otlp_endpoint", endpoint.clone())
            // Exported within a tenth of a second rather than the default 5 s.
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
    };
    let edge = traced(herald().clustered(&backends).role("edge").edge("id", "e1"))
        .start()
        .await;
    let router = traced(herald().clustered(&backends).role("router"))
        .start()
        .await;
    // A router that does not trace, beside it.
    let plain = herald().clustered(&backends).role("router").start().await;
    for n in [&edge, &router, &plain] {
        n.wait_ready().await;
    }
    // What travels on the bus, read off NATS by a client of our own.
    let nats = async_nats::connect(backends.nats_urls()[0].clone())
        .await
        .expect("nats");
    let mut envelopes = nats
        .subscribe(format!("{}.>", backends.prefix))
        .await
        .expect("subscribe");
    nats.flush().await.expect("flush");

    let mut alice = edge.connect("alpha", &in_news("alice")).await;
    let mut grpc = router.grpc(Some("alpha-api-key-0123456789")).await;
    let reply = eventually(WAIT, async || {
        let reply = send(&mut grpc, publish("alpha", To::Group("news"), r#"{"n":1}"#)).await;
        if reply.edges == 1 {
            Ok(reply)
        } else {
            Err(format!("reached {} edges", reply.edges))
        }
    })
    .await;
    assert_eq!(alice.next_msg().await["data"]["n"], 1);

    // The router's publish span, its registry and bus calls, and the edge's delivery: one trace.
    let (publish_span, deliver) = eventually(WAIT, async || {
        let all = spans.0.lock().await.clone();
        let publish = all
            .iter()
            .find(|s| {
                s.span.name == "herald.router.publish"
                    && s.attr("herald.message_id").as_deref() == Some(&reply.message_id)
            })
            .ok_or("no publish span yet")?
            .clone();
        let deliver = all
            .iter()
            .find(|s| {
                s.span.name == "herald.edge.deliver"
                    && s.attr("herald.message_id").as_deref() == Some(&reply.message_id)
            })
            .ok_or("no delivery span yet")?
            .clone();
        let children: Vec<&str> = all
            .iter()
            .filter(|s| {
                s.span.trace_id == publish.span.trace_id
                    && s.span.parent_span_id == publish.span.span_id
            })
            .map(|s| s.span.name.as_str())
            .collect();
        for want in ["herald.registry.resolve", "herald.bus.publish"] {
            if !children.contains(&want) {
                return Err(format!("no {want} child yet: {children:?}"));
            }
        }
        Ok((publish, deliver))
    })
    .await;
    assert_eq!(publish_span.node, "router");
    assert_eq!(deliver.node, "e1");
    assert_eq!(
        hex(&deliver.span.trace_id),
        hex(&publish_span.span.trace_id),
        "one trace id"
    );
    assert_eq!(
        hex(&deliver.span.parent_span_id),
        hex(&publish_span.span.span_id),
        "the delivery's parent is the publish"
    );

    // A caller's trace context is the publish's parent.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut req = tonic::Request::new(publish("alpha", To::User("alice"), r#"{"n":2}"#));
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{caller_trace}-00f067aa0ba902b7-01")
            .parse()
            .expect("metadata"),
    );
    let traced_reply = grpc.publish(req).await.expect("publish").into_inner();
    assert_eq!(alice.next_msg().await["data"]["n"], 2);
    eventually(WAIT, async || {
        let all = spans.0.lock().await.clone();
        let of_caller: Vec<&str> = all
            .iter()
            .filter(|s| hex(&s.span.trace_id) == caller_trace)
            .map(|s| s.span.name.as_str())
            .collect();
        if of_caller.contains(&"herald.router.publish")
            && of_caller.contains(&"herald.edge.deliver")
        {
            Ok(())
        } else {
            Err(format!("spans of the caller's trace: {of_caller:?}"))
        }
    })
    .await;

    // On the bus: a trace context from the tracing router, none from the other.
    let mut plain_grpc = plain.grpc(Some("alpha-api-key-0123456789")).await;
    let plain_reply = send(
        &mut plain_grpc,
        publish("alpha", To::User("alice"), r#"{"n":3}"#),
    )
    .await;
    assert_eq!(alice.next_msg().await["data"]["n"], 3);
    let mut seen = std::collections::HashMap::new();
    while seen.len() < 2 {
        let msg = tokio::time::timeout(WAIT, envelopes.next())
            .await
            .expect("an envelope on the bus in time")
            .expect("subscription open");
        let Ok(env) = Envelope::decode(msg.payload) else {
            continue;
        };
        if env.message_id == traced_reply.message_id || env.message_id == plain_reply.message_id {
            seen.insert(env.message_id.clone(), env.trace_context);
        }
    }
    let traced_ctx = &seen[&traced_reply.message_id];
    assert!(
        traced_ctx
            .get("traceparent")
            .is_some_and(|t| t.contains(caller_trace)),
        "{traced_ctx:?}"
    );
    assert!(
        seen[&plain_reply.message_id].is_empty(),
        "a router that does not trace sends no context"
    );
    // The untraced publish made no span anywhere.
    let all = spans.0.lock().await.clone();
    assert!(
        !all.iter()
            .any(|s| s.attr("herald.message_id").as_deref() == Some(&plain_reply.message_id)),
        "no span of an untraced publish"
    );
}
