//! The router's HTTP/JSON API (`router.http_listen`): checked against its OpenAPI file
//! (docs/openapi.json) on a running server, and against the gRPC API it mirrors.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use base64::Engine as _;
use herald_core::proto::v1::{ListConnectionsRequest, PublishRequest, list_connections_request};
use herald_tests::cluster::Backends;
use herald_tests::*;
use serde_json::{Value, json};
use tonic::Code;

/// The OpenAPI file, parsed.
fn openapi() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    let text = std::fs::read_to_string(path).expect("docs/openapi.json");
    serde_json::from_str(&text).expect("docs/openapi.json is JSON")
}

/// A JSON Schema validator for the keywords the OpenAPI file uses. A keyword it does not know
/// fails the test: the file cannot say more than is checked.
struct Validator<'a> {
    doc: &'a Value,
}

fn push(errors: &mut Vec<String>, at: &str, what: String) {
    errors.push(format!("{at}: {what}"));
}

impl Validator<'_> {
    fn resolve<'s>(&'s self, schema: &'s Value) -> &'s Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r
                    .strip_prefix("#/components/schemas/")
                    .unwrap_or_else(|| panic!("unsupported $ref {r}"));
                &self.doc["components"]["schemas"][name]
            }
            None => schema,
        }
    }

    /// Every way `v` breaks `schema`, each with its place.
    fn check(&self, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = self.resolve(schema);
        let Some(obj) = schema.as_object() else {
            panic!("schema at {at} is not an object: {schema}");
        };
        for (keyword, arg) in obj {
            match keyword.as_str() {
                // Annotations.
                "description" | "contentEncoding" | "title" => {}
                "type" => {
                    let t = arg.as_str().expect("type is a string");
                    let ok = match t {
                        "object" => v.is_object(),
                        "array" => v.is_array(),
                        "string" => v.is_string(),
                        "integer" => v.is_i64() || v.is_u64(),
                        "number" => v.is_number(),
                        "boolean" => v.is_boolean(),
                        "null" => v.is_null(),
                        other => panic!("unsupported type {other}"),
                    };
                    if !ok {
                        push(errors, at, format!("{v} is not of type {t}"));
                    }
                }
                "enum" => {
                    if !arg.as_array().expect("enum list").contains(v) {
                        push(errors, at, format!("{v} is not one of {arg}"));
                    }
                }
                "required" => {
                    if let Some(o) = v.as_object() {
                        for name in arg.as_array().expect("required list") {
                            let name = name.as_str().expect("a name");
                            if !o.contains_key(name) {
                                push(errors, at, format!("{name} is required"));
                            }
                        }
                    }
                }
                "minProperties" | "maxProperties" => {
                    if let Some(o) = v.as_object() {
                        let n = arg.as_u64().expect("a count") as usize;
                        let bad = if keyword == "minProperties" {
                            o.len() < n
                        } else {
                            o.len() > n
                        };
                        if bad {
                            push(
                                errors,
                                at,
                                format!("{} properties breaks {keyword} {n}", o.len()),
                            );
                        }
                    }
                }
                "minLength" | "maxLength" => {
                    if let Some(s) = v.as_str() {
                        let n = arg.as_u64().expect("a length") as usize;
                        let len = s.chars().count();
                        let bad = if keyword == "minLength" {
                            len < n
                        } else {
                            len > n
                        };
                        if bad {
                            push(errors, at, format!("length {len} breaks {keyword} {n}"));
                        }
                    }
                }
                "minimum" | "maximum" => {
                    if let Some(x) = v.as_f64() {
                        let n = arg.as_f64().expect("a bound");
                        let bad = if keyword == "minimum" { x < n } else { x > n };
                        if bad {
                            push(errors, at, format!("{x} breaks {keyword} {n}"));
                        }
                    }
                }
                "maxItems" => {
                    if let Some(a) = v.as_array() {
                        let n = arg.as_u64().expect("a count") as usize;
                        if a.len() > n {
                            push(errors, at, format!("{} items breaks maxItems {n}", a.len()));
                        }
                    }
                }
                "items" => {
                    if let Some(a) = v.as_array() {
                        for (i, item) in a.iter().enumerate() {
                            self.check(arg, item, &format!("{at}[{i}]"), errors);
                        }
                    }
                }
                "properties" => {
                    if let Some(o) = v.as_object() {
                        for (name, sub) in arg.as_object().expect("properties map") {
                            if let Some(x) = o.get(name) {
                                self.check(sub, x, &format!("{at}.{name}"), errors);
                            }
                        }
                    }
                }
                "additionalProperties" => {
                    if let Some(o) = v.as_object() {
                        let known = obj.get("properties").and_then(Value::as_object);
                        for (name, x) in o {
                            if known.is_some_and(|k| k.contains_key(name)) {
                                continue;
                            }
                            match arg {
                                Value::Bool(false) => {
                                    errors.push(format!("{at}: {name} is not allowed"));
                                }
                                Value::Bool(true) => {}
                                sub => self.check(sub, x, &format!("{at}.{name}"), errors),
                            }
                        }
                    }
                }
                "not" => {
                    let mut sub = Vec::new();
                    self.check(arg, v, at, &mut sub);
                    if sub.is_empty() {
                        push(
                            errors,
                            at,
                            format!("{v} matches the schema it must not: {arg}"),
                        );
                    }
                }
                "oneOf" => {
                    let matching = arg
                        .as_array()
                        .expect("oneOf list")
                        .iter()
                        .filter(|s| {
                            let mut sub = Vec::new();
                            self.check(s, v, at, &mut sub);
                            sub.is_empty()
                        })
                        .count();
                    if matching != 1 {
                        push(
                            errors,
                            at,
                            format!("matches {matching} of oneOf {arg}, not 1"),
                        );
                    }
                }
                "$ref" => {}
                other => panic!("the validator does not know the keyword {other:?} (at {at})"),
            }
        }
    }

    /// Every property name a schema documents, nested ones included.
    fn fields(&self, schema: &Value, out: &mut BTreeSet<String>) {
        let schema = self.resolve(schema);
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, sub) in props {
                out.insert(name.clone());
                self.fields(sub, out);
            }
        }
        if let Some(items) = schema.get("items") {
            self.fields(items, out);
        }
    }

    fn errors(&self, schema: &Value, v: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        self.check(schema, v, "$", &mut errors);
        errors
    }
}

#[test]
fn the_validator_catches_what_it_claims_to() {
    let doc = json!({"components": {"schemas": {"S": {
        "type": "object", "additionalProperties": false, "required": ["a"],
        "oneOf": [{"required": ["b"]}, {"required": ["c"]}],
        "not": {"required": ["d", "e"]},
        "properties": {
            "a": {"type": "integer", "minimum": 0, "maximum": 9},
            "b": {"type": "string", "minLength": 1, "maxLength": 2},
            "c": {"type": "array", "maxItems": 1, "items": {"enum": ["x"]}},
            "d": {}, "e": {},
            "m": {"type": "object", "additionalProperties": {"type": "boolean"},
                  "minProperties": 1, "maxProperties": 1}
        }
    }}}});
    let v = Validator { doc: &doc };
    let s = json!({"$ref": "#/components/schemas/S"});
    assert_eq!(
        v.errors(&s, &json!({"a": 1, "b": "x"})),
        Vec::<String>::new()
    );
    for bad in [
        json!({"b": "x"}),
        json!({"a": 1}),
        json!({"a": 1, "b": "x", "c": []}),
        json!({"a": -1, "b": "x"}),
        json!({"a": 10, "b": "x"}),
        json!({"a": 1.5, "b": "x"}),
        json!({"a": 1, "b": ""}),
        json!({"a": 1, "b": "xyz"}),
        json!({"a": 1, "c": ["x", "x"]}),
        json!({"a": 1, "c": ["y"]}),
        json!({"a": 1, "b": "x", "z": 0}),
        json!({"a": 1, "b": "x", "d": 0, "e": 0}),
        json!({"a": 1, "b": "x", "m": {}}),
        json!({"a": 1, "b": "x", "m": {"p": 1}}),
        json!({"a": 1, "b": "x", "m": {"p": true, "q": true}}),
        json!([1]),
    ] {
        assert!(!v.errors(&s, &bad).is_empty(), "{bad} passed");
    }
}

/// Every object key in a JSON value, nested ones included.
fn keys(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                out.insert(k.clone());
                keys(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| keys(x, out)),
        _ => {}
    }
}

/// The operation `POST path` of the file.
fn operation<'a>(doc: &'a Value, path: &str) -> &'a Value {
    let op = &doc["paths"][path]["post"];
    assert!(op.is_object(), "POST {path} is not in docs/openapi.json");
    op
}

/// One call and what it must get.
struct Case {
    path: &'static str,
    key: Option<&'static str>,
    body: String,
    status: u16,
    /// Extra header lines (e.g. a declared length).
    head: Vec<(&'static str, String)>,
}

fn case(path: &'static str, key: Option<&'static str>, body: Value, status: u16) -> Case {
    Case {
        path,
        key,
        body: body.to_string(),
        status,
        head: Vec::new(),
    }
}

fn raw_case(path: &'static str, key: Option<&'static str>, body: &str, status: u16) -> Case {
    Case {
        body: body.into(),
        ..case(path, key, Value::Null, status)
    }
}

/// A body declared larger than any call takes, sent as its head alone.
fn too_large(path: &'static str) -> Case {
    Case {
        body: String::new(),
        head: vec![("content-length", (64 << 20).to_string())],
        ..case(path, Some(ALPHA_KEY), Value::Null, 413)
    }
}

/// Runs `c` against the server and checks the answer against the file: a documented status,
/// JSON, the documented schema; a request answered 200 must match the request schema too.
/// Returns the answer's body. Records the (path, status) covered.
async fn run(
    addr: SocketAddr,
    doc: &Value,
    covered: &mut BTreeSet<(String, String)>,
    c: Case,
) -> Value {
    let v = Validator { doc };
    let op = operation(doc, c.path);
    let auth = c.key.map(|k| format!("Bearer {k}"));
    let mut head: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        head.push(("authorization", a));
    }
    for (k, val) in &c.head {
        head.push((k, val));
    }
    let r = http_request(addr, "POST", c.path, &head, c.body.as_bytes()).await;
    let what = format!("POST {} {} -> {} {}", c.path, c.body, r.status, r.body);
    assert_eq!(r.status, c.status, "{what}");
    let status = r.status.to_string();
    let documented = &op["responses"][&status];
    assert!(
        documented.is_object(),
        "status {status} is not documented: {what}"
    );
    assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
    let body: Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {what}"));
    let schema = &documented["content"]["application/json"]["schema"];
    assert_eq!(v.errors(schema, &body), Vec::<String>::new(), "{what}");
    if r.status == 200 && !c.body.is_empty() {
        let sent: Value = serde_json::from_str(&c.body).expect("a JSON request");
        let request_schema = &op["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(
            v.errors(request_schema, &sent),
            Vec::<String>::new(),
            "the server took a request the file does not describe: {what}"
        );
    }
    if r.status == 401 {
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}");
    }
    covered.insert((c.path.to_string(), status));
    body
}

/// The `/v1/admin/...` paths named in `text` (between quotes or backquotes).
fn admin_paths_in(text: &str) -> BTreeSet<String> {
    text.match_indices("/v1/admin/")
        .map(|(i, _)| {
            let rest = &text[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '/' || c == '_'))
                .unwrap_or(rest.len());
            rest[..end].to_string()
        })
        // `/v1/admin/...` in prose.
        .filter(|p| !p.ends_with('/'))
        .collect()
}

#[test]
fn every_admin_route_is_in_the_openapi_file_and_the_checks() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let read = |p: &str| {
        std::fs::read_to_string(format!("{root}/{p}")).unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    let checked: BTreeSet<String> = ADMIN_PATHS.iter().map(|p| p.to_string()).collect();
    let doc = openapi();
    let in_file: BTreeSet<String> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .filter(|p| p.starts_with("/v1/admin/"))
        .cloned()
        .collect();
    // The routes the router serves (router/src/admin_http.rs `.route(...)`).
    let served = admin_paths_in(&read("router/src/admin_http.rs"));
    // The table of docs/api.md.
    let in_api_md = admin_paths_in(&read("docs/api.md"));
    assert_eq!(
        in_file, served,
        "docs/openapi.json against the router's routes"
    );
    assert_eq!(checked, served, "ADMIN_PATHS against the router's routes");
    assert_eq!(in_api_md, served, "docs/api.md against the router's routes");
    // Each path has refusals of its own in admin_cases (beyond the body size).
    let cased: BTreeSet<String> = admin_cases()
        .iter()
        .filter(|c| c.status != 413)
        .map(|c| c.path.to_string())
        .collect();
    assert_eq!(cased, served, "admin_cases() against the router's routes");
}

#[tokio::test]
async fn the_http_api_answers_as_its_openapi_file_says() {
    let doc = openapi();
    let v = Validator { doc: &doc };
    // Every example in the file is a valid request.
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let content = &item["post"]["requestBody"]["content"]["application/json"];
        for (name, example) in content["examples"].as_object().into_iter().flatten() {
            assert_eq!(
                v.errors(&content["schema"], &example["value"]),
                Vec::<String>::new(),
                "example {name} of {path}"
            );
        }
    }

    // ... and together they use every documented request field.
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let content = &item["post"]["requestBody"]["content"]["application/json"];
        let mut documented = BTreeSet::new();
        v.fields(&content["schema"], &mut documented);
        let mut used = BTreeSet::new();
        for example in content["examples"].as_object().expect("examples").values() {
            keys(&example["value"], &mut used);
        }
        let unused: Vec<_> = documented.difference(&used).collect();
        assert!(unused.is_empty(), "{path}: no example uses {unused:?}");
    }

    // A cluster node, so that a backend outage (503) can be shown too.
    let mut b = Backends::start_with(false, 1).await;
    let node = herald()
        .clustered(&b)
        .role("all")
        .edge("id", "e1")
        .router("http_listen", "127.0.0.1:0")
        .router("max_payload_bytes", 1024)
        .router("control_timeout_ms", 700)
        .start()
        .await;
    node.wait_ready().await;
    let addr = node.http;
    let mut c = claims("alpha", "alice");
    c["groups"] = json!(["news"]);
    let mut alice = node.connect("alpha", &hs256(ALPHA_SECRET, None, &c)).await;
    let mut covered = BTreeSet::new();

    // The file's examples (project "acme", not configured here) parse on the server: they get
    // as far as the project check, so no documented field is refused as unknown.
    for (path, item) in doc["paths"].as_object().expect("paths") {
        if path.starts_with("/v1/admin/") {
            // They change what the next ones see: run in order below.
            continue;
        }
        let path: &'static str = String::leak(path.clone());
        let content = &item["post"]["requestBody"]["content"]["application/json"];
        for example in content["examples"].as_object().expect("examples").values() {
            let batch = path.ends_with("/batch");
            let c = case(
                path,
                Some(ADMIN_KEY),
                example["value"].clone(),
                if batch { 200 } else { 404 },
            );
            let r = run(addr, &doc, &mut covered, c).await;
            let refusals: Vec<&Value> = if batch {
                r["acks"].as_array().expect("acks").iter().collect()
            } else {
                vec![&r]
            };
            for e in refusals {
                let m = e.get("message").or(e.get("error_message"));
                assert_eq!(m, Some(&json!("unknown project \"acme\"")), "{path}: {r}");
            }
        }
    }

    admin_examples(addr, &doc, &mut covered).await;

    let (p, pb, cnt, list, dis, pres) = (
        "/v1/publish",
        "/v1/publish/batch",
        "/v1/connections/count",
        "/v1/connections/list",
        "/v1/connections/disconnect",
        "/v1/presence",
    );
    let (sub, unsub) = ("/v1/connections/subscribe", "/v1/connections/unsubscribe");
    let to_alice = json!({"project": "alpha", "target": {"user": "alice"}, "data": {"n": 1}});

    // Publish: as JSON, as base64, a broadcast with an idempotency key, twice.
    let r = run(
        addr,
        &doc,
        &mut covered,
        case(p, Some(ALPHA_KEY), to_alice.clone(), 200),
    )
    .await;
    assert_eq!(r["resolution"], "RESOLUTION_DELIVERED");
    assert_eq!(alice.next_msg().await["data"], json!({"n": 1}));
    let bytes =
        json!({"project": "alpha", "target": {"group": "news"}, "b64": "AP8=", "event": "raw"});
    run(
        addr,
        &doc,
        &mut covered,
        case(p, Some(ALPHA_KEY), bytes, 200),
    )
    .await;
    let m = alice.next_msg().await;
    assert_eq!(
        (m["b64"].as_str(), m["event"].as_str()),
        (Some("AP8="), Some("raw"))
    );
    let once = json!({"project": "alpha", "target": {"broadcast": {}}, "data": "x", "idempotency_key": "k1"});
    let r = run(
        addr,
        &doc,
        &mut covered,
        case(p, Some(ALPHA_KEY), once.clone(), 200),
    )
    .await;
    assert_eq!(r["resolution"], "RESOLUTION_DELIVERED");
    let r = run(
        addr,
        &doc,
        &mut covered,
        case(p, Some(ALPHA_KEY), once, 200),
    )
    .await;
    assert_eq!(r["resolution"], "RESOLUTION_DUPLICATE");
    assert_eq!(alice.next_msg().await["data"], "x");

    let errors = [
        case(p, None, to_alice.clone(), 401),
        case(p, Some("nope-nope-nope-nope"), to_alice.clone(), 401),
        case(p, Some(BETA_KEY), to_alice.clone(), 403),
        case(
            p,
            Some(ADMIN_KEY),
            json!({"project": "gamma", "target": {"user": "a"}}),
            404,
        ),
        case(
            p,
            Some(ALPHA_KEY),
            json!({"project": "alpha", "target": {"group": "a.*"}}),
            400,
        ),
        case(
            p,
            Some(ALPHA_KEY),
            json!({"project": "alpha", "target": {}}),
            400,
        ),
        case(
            p,
            Some(ALPHA_KEY),
            json!({"project": "alpha", "target": {"user": "u"}, "payload": "x"}),
            400,
        ),
        case(
            p,
            Some(ALPHA_KEY),
            json!({"project": "alpha", "target": {"user": "u"}, "data": "x".repeat(1100)}),
            400,
        ),
        raw_case(p, Some(ALPHA_KEY), "{not json", 400),
        too_large(p),
        // Batch.
        raw_case(pb, Some(ALPHA_KEY), "[]", 400),
        case(
            pb,
            Some(ALPHA_KEY),
            json!({"messages": vec![to_alice.clone(); 1001]}),
            400,
        ),
        case(pb, None, json!({"messages": []}), 401),
        too_large(pb),
        // Count.
        raw_case(cnt, Some(ALPHA_KEY), "", 200),
        case(cnt, None, json!({}), 401),
        case(cnt, Some(BETA_KEY), json!({"project": "alpha"}), 403),
        case(cnt, Some(ADMIN_KEY), json!({"project": "gamma"}), 404),
        case(cnt, Some(ALPHA_KEY), json!({"project": "Alpha"}), 400),
        too_large(cnt),
        // List.
        case(list, Some(ALPHA_KEY), json!({"project": "alpha"}), 400),
        case(
            list,
            Some(ALPHA_KEY),
            json!({"project": "alpha", "user": "a", "group": "b"}),
            400,
        ),
        case(
            list,
            Some(ALPHA_KEY),
            json!({"project": "alpha", "user": "a", "page_token": "x"}),
            400,
        ),
        case(list, None, json!({"project": "alpha", "user": "a"}), 401),
        case(
            list,
            Some(BETA_KEY),
            json!({"project": "alpha", "user": "a"}),
            403,
        ),
        case(
            list,
            Some(ADMIN_KEY),
            json!({"project": "gamma", "user": "a"}),
            404,
        ),
        too_large(list),
        // Disconnect.
        case(dis, Some(ALPHA_KEY), json!({"project": "alpha"}), 400),
        case(
            dis,
            Some(ALPHA_KEY),
            json!({"project": "alpha", "user": "a", "connection_id": "e1-1"}),
            400,
        ),
        case(dis, None, json!({"project": "alpha", "user": "a"}), 401),
        case(
            dis,
            Some(BETA_KEY),
            json!({"project": "alpha", "user": "a"}),
            403,
        ),
        case(
            dis,
            Some(ADMIN_KEY),
            json!({"project": "gamma", "user": "a"}),
            404,
        ),
        too_large(dis),
        // Presence.
        case(pres, Some(ALPHA_KEY), json!({"project": "alpha"}), 400),
        case(
            pres,
            Some(ALPHA_KEY),
            json!({"project": "alpha", "group": "news", "page_token": "a.*"}),
            400,
        ),
        case(pres, None, json!({"project": "alpha", "group": "g"}), 401),
        case(
            pres,
            Some(BETA_KEY),
            json!({"project": "alpha", "group": "g"}),
            403,
        ),
        case(
            pres,
            Some(ADMIN_KEY),
            json!({"project": "gamma", "group": "g"}),
            404,
        ),
        too_large(pres),
    ];
    // Subscribe and unsubscribe: the same refusals.
    let membership_errors = [sub, unsub].into_iter().flat_map(|path| {
        [
            case(
                path,
                Some(ALPHA_KEY),
                json!({"project": "alpha", "group": "g"}),
                400,
            ),
            case(
                path,
                Some(ALPHA_KEY),
                json!({"project": "alpha", "user": "a", "group": "a.*"}),
                400,
            ),
            case(
                path,
                None,
                json!({"project": "alpha", "user": "a", "group": "g"}),
                401,
            ),
            case(
                path,
                Some(BETA_KEY),
                json!({"project": "alpha", "user": "a", "group": "g"}),
                403,
            ),
            case(
                path,
                Some(ADMIN_KEY),
                json!({"project": "gamma", "user": "a", "group": "g"}),
                404,
            ),
            too_large(path),
        ]
    });
    for c in errors.into_iter().chain(membership_errors) {
        run(addr, &doc, &mut covered, c).await;
    }
    for c in admin_cases() {
        run(addr, &doc, &mut covered, c).await;
    }

    // A batch: each message its ack, a refused one does not stop the next.
    let batch = json!({"messages": [
        {"project": "alpha", "target": {"user": "alice"}, "data": 2},
        {"project": "beta", "target": {"user": "alice"}, "data": 3},
        {"project": "alpha", "target": {"user": "alice"}, "data": 4},
    ]});
    let r = run(
        addr,
        &doc,
        &mut covered,
        case(pb, Some(ALPHA_KEY), batch, 200),
    )
    .await;
    let acks = r["acks"].as_array().expect("acks");
    let ids: Vec<&Value> = acks.iter().map(|a| &a["request_id"]).collect();
    assert_eq!(ids, [0, 1, 2]);
    assert_eq!(acks[0]["reply"]["resolution"], "RESOLUTION_DELIVERED");
    assert_eq!(
        (&acks[1]["error_code"], &acks[1]["error_message"]),
        (
            &json!(7),
            &json!("this API key does not belong to that project")
        )
    );
    assert_eq!(alice.next_msg().await["data"], 2);
    assert_eq!(alice.next_msg().await["data"], 4);

    let r = run(
        addr,
        &doc,
        &mut covered,
        case(cnt, Some(ADMIN_KEY), json!({}), 200),
    )
    .await;
    // gamma: created through the admin API above.
    assert_eq!(r["connections"], json!({"alpha": 1, "beta": 0, "gamma": 0}));
    let r = run(
        addr,
        &doc,
        &mut covered,
        case(
            list,
            Some(ALPHA_KEY),
            json!({"project": "alpha", "group": "news", "page_size": 1}),
            200,
        ),
    )
    .await;
    let id = r["connections"][0]["id"]
        .as_str()
        .expect("an id")
        .to_string();
    assert_eq!(r["next_page_token"], "");
    let r = run(
        addr,
        &doc,
        &mut covered,
        case(
            pres,
            Some(ALPHA_KEY),
            json!({"project": "alpha", "group": "news", "page_size": 1}),
            200,
        ),
    )
    .await;
    assert_eq!(
        r,
        json!({"users": [{"user": "alice", "connections": 1}], "connections": 1,
            "users_total": 1, "users_exact": true, "missing_edges": [], "next_page_token": ""})
    );
    let r = run(
        addr,
        &doc,
        &mut covered,
        case(
            sub,
            Some(ALPHA_KEY),
            json!({"project": "alpha", "user": "alice", "group": "extra"}),
            200,
        ),
    )
    .await;
    assert_eq!(
        r,
        json!({"changed": 1, "unchanged": 0, "refused": 0, "missing_edges": []})
    );
    assert_eq!(
        alice.next_json().await,
        json!({"type": "subscribed", "group": "extra"})
    );
    let r = run(
        addr,
        &doc,
        &mut covered,
        case(
            unsub,
            Some(ALPHA_KEY),
            json!({"project": "alpha", "connection_id": id, "group": "extra"}),
            200,
        ),
    )
    .await;
    assert_eq!(r["changed"], 1);
    assert_eq!(alice.next_json().await["type"], "unsubscribed");
    let r = run(
        addr,
        &doc,
        &mut covered,
        case(
            dis,
            Some(ALPHA_KEY),
            json!({"project": "alpha", "connection_id": id, "reconnect_after_ms": 5}),
            200,
        ),
    )
    .await;
    assert_eq!(r["disconnected"], 1);
    assert_eq!(alice.expect_close().await.0, 4009);

    // Neither another method nor another path is served.
    for (method, path, status) in [
        ("GET", p, 405),
        ("PUT", list, 405),
        ("POST", "/v1/other", 404),
    ] {
        let r = http_request(addr, method, path, &[], b"").await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        let body: Value = serde_json::from_str(&r.body).expect("JSON");
        assert_eq!(
            v.errors(&json!({"$ref": "#/components/schemas/Error"}), &body),
            Vec::<String>::new()
        );
    }

    // Redis down: calls that need the registry answer 503 with the gRPC message (operator
    // calls once the router's cached list of live edges is too old to vouch for).
    b.redis[0].kill().await;
    let registry_down = |r: Value| {
        assert_eq!(r["code"], "UNAVAILABLE");
        let m = r["message"].as_str().expect("message");
        assert!(m.starts_with("registry unavailable: "), "{m}");
    };
    let keyed = json!({"project": "alpha", "target": {"user": "u"}, "idempotency_key": "k2"});
    registry_down(
        run(
            addr,
            &doc,
            &mut covered,
            case(p, Some(ALPHA_KEY), keyed, 503),
        )
        .await,
    );
    eventually(WAIT, async || {
        let auth = [("authorization", format!("Bearer {ALPHA_KEY}"))];
        let head: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
        match http_request(addr, "POST", cnt, &head, b"{}").await {
            r if r.status == 503 => Ok(()),
            r => Err(format!("{} {}", r.status, r.body)),
        }
    })
    .await;
    for c in [
        case(cnt, Some(ALPHA_KEY), json!({}), 503),
        case(
            list,
            Some(ALPHA_KEY),
            json!({"project": "alpha", "user": "u"}),
            503,
        ),
        case(
            dis,
            Some(ALPHA_KEY),
            json!({"project": "alpha", "user": "u"}),
            503,
        ),
        case(
            pres,
            Some(ALPHA_KEY),
            json!({"project": "alpha", "group": "news"}),
            503,
        ),
        case(
            sub,
            Some(ALPHA_KEY),
            json!({"project": "alpha", "user": "u", "group": "news"}),
            503,
        ),
        case(
            unsub,
            Some(ALPHA_KEY),
            json!({"project": "alpha", "user": "u", "group": "news"}),
            503,
        ),
    ] {
        registry_down(run(addr, &doc, &mut covered, c).await);
    }
    // Admin changes: the projects are kept in the same Redis; nothing changes.
    for path in [
        A_CREATE,
        A_UPDATE,
        A_DELETE,
        A_KEY_ADD,
        A_KEY_RETIRE,
        A_API_CREATE,
        A_API_DELETE,
        A_BAN_ADD,
        A_BAN_LIFT,
    ] {
        let body = match path {
            A_CREATE => json!({"project": "zeta"}),
            A_BAN_ADD | A_BAN_LIFT => json!({"project": "gamma", "user": "u"}),
            A_UPDATE => json!({"project": "gamma", "disabled": false}),
            A_KEY_ADD => json!({"project": "gamma", "key": hs256_key("k9")}),
            A_KEY_RETIRE => json!({"project": "gamma", "kid": "k1"}),
            A_API_DELETE => json!({"project": "gamma", "id": "000000000000"}),
            _ => json!({"project": "gamma"}),
        };
        let r = run(
            addr,
            &doc,
            &mut covered,
            case(path, Some(ADMIN_KEY), body, 503),
        )
        .await;
        assert_eq!(r["code"], "UNAVAILABLE", "{path}: {r}");
    }

    // Every documented answer was seen.
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item["post"]["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .map(|s| (path.clone(), s.clone()))
        })
        .collect();
    let unseen: Vec<_> = documented.difference(&covered).collect();
    assert!(unseen.is_empty(), "documented but never seen: {unseen:?}");
}

const A_CREATE: &str = "/v1/admin/projects/create";
const A_GET: &str = "/v1/admin/projects/get";
const A_LIST: &str = "/v1/admin/projects/list";
const A_UPDATE: &str = "/v1/admin/projects/update";
const A_DELETE: &str = "/v1/admin/projects/delete";
const A_KEY_ADD: &str = "/v1/admin/jwt_keys/add";
const A_KEY_RETIRE: &str = "/v1/admin/jwt_keys/retire";
const A_API_CREATE: &str = "/v1/admin/api_keys/create";
const A_API_DELETE: &str = "/v1/admin/api_keys/delete";
const A_AUDIT: &str = "/v1/admin/audit/list";
const A_BAN_ADD: &str = "/v1/admin/bans/add";
const A_BAN_LIFT: &str = "/v1/admin/bans/lift";
const A_BAN_LIST: &str = "/v1/admin/bans/list";

/// Every admin path: the ones the file, docs/api.md and the checks below must all name.
const ADMIN_PATHS: [&str; 13] = [
    A_CREATE,
    A_GET,
    A_LIST,
    A_UPDATE,
    A_DELETE,
    A_KEY_ADD,
    A_KEY_RETIRE,
    A_API_CREATE,
    A_API_DELETE,
    A_AUDIT,
    A_BAN_ADD,
    A_BAN_LIFT,
    A_BAN_LIST,
];

fn hs256_key(kid: &str) -> Value {
    json!({"kid": kid, "alg": "HS256", "secret": "gamma-secret-0123456789abcdef0123456789"})
}

/// The admin paths' examples, in an order where each does what it shows (project "acme" is
/// created, changed, then deleted): every example of every admin path runs once.
async fn admin_examples(addr: SocketAddr, doc: &Value, covered: &mut BTreeSet<(String, String)>) {
    let plan: &[(&'static str, &str, u16)] = &[
        (A_CREATE, "full", 200),
        (A_GET, "one", 200),
        (A_LIST, "all", 200),
        (A_UPDATE, "limits", 200),
        (A_UPDATE, "disable", 200),
        (A_UPDATE, "jwks", 200),
        (A_UPDATE, "remove_jwks", 200),
        (A_UPDATE, "presence_and_webhook", 200),
        (A_UPDATE, "remove_webhook", 200),
        (A_UPDATE, "permessage_deflate", 200),
        (A_KEY_ADD, "hs256", 200),
        (A_KEY_ADD, "es256", 200),
        (A_KEY_RETIRE, "one", 200),
        (A_API_CREATE, "one", 200),
        // The example's id is no key of acme's.
        (A_API_DELETE, "one", 404),
        (A_BAN_ADD, "one_hour", 200),
        (A_BAN_ADD, "until_lifted", 200),
        (A_BAN_LIST, "one", 200),
        (A_BAN_LIFT, "one", 200),
        // Lifted already.
        (A_BAN_LIFT, "one", 404),
        (A_AUDIT, "all", 200),
        (A_AUDIT, "page", 200),
        (A_DELETE, "one", 200),
        // Gone: the examples are refused as a project that does not exist.
        (A_GET, "one", 404),
        (A_BAN_LIST, "one", 404),
    ];
    let mut ran = BTreeSet::new();
    for &(path, name, status) in plan {
        let example = &doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["examples"]
            [name]["value"];
        assert!(!example.is_null(), "{path} has no example {name}");
        let r = run(
            addr,
            doc,
            covered,
            case(path, Some(ADMIN_KEY), example.clone(), status),
        )
        .await;
        ran.insert((path, name.to_string()));
        match (path, status) {
            (A_CREATE, _) => {
                assert_eq!(r["project"]["source"], "api", "{r}");
                assert_eq!(
                    r["project"]["jwt_keys"][1],
                    json!({"kid": "k2", "alg": "ES256"})
                );
                assert_eq!(r["project"]["permessage_deflate"], true, "{r}");
                // The CA is kept, never shown.
                assert_eq!(r["project"]["jwks"]["custom_ca"], true, "{r}");
                assert!(!r.to_string().contains("BEGIN CERTIFICATE"), "{r}");
            }
            (A_UPDATE, _) if name == "jwks" => {
                let jwks = &r["project"]["jwks"];
                assert_eq!(
                    jwks["url"], "https://login.example.com/.well-known/jwks.json",
                    "{r}"
                );
                assert_eq!(jwks["custom_ca"], true, "{r}");
                assert_eq!(
                    (&jwks["min_refresh_secs"], &jwks["max_age_cap_secs"]),
                    (&json!(30), &json!(3600)),
                    "{r}"
                );
                assert!(!r.to_string().contains("BEGIN CERTIFICATE"), "{r}");
            }
            (A_UPDATE, _) if name == "presence_and_webhook" => {
                // The CA is kept, never shown.
                assert_eq!(r["project"]["webhook"]["custom_ca"], true, "{r}");
                assert!(!r.to_string().contains("BEGIN CERTIFICATE"), "{r}");
            }
            (A_UPDATE, _) if name == "permessage_deflate" => {
                assert_eq!(r["project"]["permessage_deflate"], false, "{r}");
            }
            (A_UPDATE, _) if name == "remove_jwks" => {
                assert!(r["project"].get("jwks").is_none(), "{r}");
            }
            (A_BAN_ADD, _) => {
                let ban = &r["ban"];
                assert_eq!(ban["project"], "acme", "{r}");
                let until = ban["until_ms"].as_u64().expect("until_ms");
                let created = ban["created_at_ms"].as_u64().expect("created_at_ms");
                if name == "one_hour" {
                    assert_eq!(until - created, 3_600_000, "{r}");
                    assert_eq!(ban["reason"], "spam", "{r}");
                } else {
                    assert_eq!(until, 0, "until lifted: {r}");
                }
            }
            (A_BAN_LIST, 200) => {
                let users: Vec<&Value> = r["bans"]
                    .as_array()
                    .expect("bans")
                    .iter()
                    .map(|b| &b["user"])
                    .collect();
                assert_eq!(users, ["eve", "mallory"], "{r}");
            }
            (A_BAN_LIFT, 200) => {
                assert_eq!(
                    r,
                    json!({"project": "acme", "user": "mallory", "lifted": true})
                );
                let list = json!({"project": "acme"});
                let r = run(
                    addr,
                    doc,
                    covered,
                    case(A_BAN_LIST, Some(ADMIN_KEY), list, 200),
                )
                .await;
                assert_eq!(r["bans"].as_array().map(Vec::len), Some(1), "{r}");
                assert_eq!(r["bans"][0]["user"], "eve", "{r}");
            }
            (A_API_CREATE, _) => {
                // The key made, deleted by its id.
                let body = json!({"project": "acme", "id": r["id"]});
                let r = run(
                    addr,
                    doc,
                    covered,
                    case(A_API_DELETE, Some(ADMIN_KEY), body, 200),
                )
                .await;
                assert_eq!(r["project"]["api_keys"], json!([]), "{r}");
            }
            (A_KEY_RETIRE, _) => {
                let kids: Vec<&Value> = r["project"]["jwt_keys"]
                    .as_array()
                    .expect("keys")
                    .iter()
                    .map(|k| &k["kid"])
                    .collect();
                assert_eq!(kids, ["k2", "k3", "k4"], "{r}");
            }
            (A_AUDIT, _) if name == "all" => {
                let first = r["entries"]
                    .as_array()
                    .and_then(|e| e.iter().find(|e| e["project"] == "acme"))
                    .unwrap_or_else(|| panic!("acme's changes are logged: {r}"));
                assert_eq!(first["action"], "project.create", "{r}");
                let bans: Vec<&Value> = r["entries"]
                    .as_array()
                    .expect("entries")
                    .iter()
                    .filter(|e| e["project"] == "acme")
                    .map(|e| &e["action"])
                    .filter(|a| a.as_str().is_some_and(|a| a.starts_with("ban.")))
                    .collect();
                assert_eq!(bans, ["ban.add", "ban.add", "ban.lift"], "{r}");
            }
            (_, 404) => {
                let m = r["message"].as_str().unwrap_or_default();
                assert!(m.contains("\"acme\""), "{path}: {r}");
            }
            _ => {}
        }
    }
    // Every admin example ran.
    for (path, item) in doc["paths"].as_object().expect("paths") {
        if !path.starts_with("/v1/admin/") {
            continue;
        }
        let content = &item["post"]["requestBody"]["content"]["application/json"];
        for name in content["examples"].as_object().expect("examples").keys() {
            assert!(
                ran.iter().any(|(p, n)| p == path && n == name),
                "example {name} of {path} is not in the plan"
            );
        }
    }
}

/// The admin paths' refusals (and a few answers): every status the file documents but 503,
/// shown once the backend is down.
fn admin_cases() -> Vec<Case> {
    let gamma = json!({"project": "gamma", "jwt_keys": [hs256_key("k1")]});
    let short =
        json!({"project": "gamma", "key": {"kid": "k2", "alg": "HS256", "secret": "short"}});
    let mut cases = vec![
        // A project of the API's for the rest.
        case(A_CREATE, Some(ADMIN_KEY), gamma.clone(), 200),
        case(A_CREATE, Some(ADMIN_KEY), json!({"project": "Bad Id"}), 400),
        case(A_CREATE, None, gamma.clone(), 401),
        case(A_CREATE, Some(ALPHA_KEY), json!({"project": "zeta"}), 403),
        case(A_CREATE, Some(ADMIN_KEY), json!({"project": "alpha"}), 409),
        case(A_CREATE, Some(ADMIN_KEY), gamma, 409),
        case(
            A_GET,
            Some(ADMIN_KEY),
            json!({"project": "alpha", "x": 1}),
            400,
        ),
        case(A_GET, None, json!({"project": "alpha"}), 401),
        case(A_GET, Some(BETA_KEY), json!({"project": "alpha"}), 403),
        case(A_GET, Some(ADMIN_KEY), json!({"project": "nope"}), 404),
        case(A_LIST, Some(ALPHA_KEY), json!({}), 200),
        case(A_LIST, Some(ADMIN_KEY), json!({"x": 1}), 400),
        case(A_LIST, None, json!({}), 401),
        // The configuration file's project is read-only: FAILED_PRECONDITION.
        case(
            A_UPDATE,
            Some(ALPHA_KEY),
            json!({"project": "alpha", "disabled": true}),
            400,
        ),
        case(A_UPDATE, None, json!({"project": "gamma"}), 401),
        case(A_UPDATE, Some(BETA_KEY), json!({"project": "gamma"}), 403),
        case(A_UPDATE, Some(ADMIN_KEY), json!({"project": "nope"}), 404),
        case(
            A_UPDATE,
            Some(ADMIN_KEY),
            json!({"project": "gamma", "limits": {"origins": ["https://a.example.com"], "deny_ips": ["10.0.0.0/8"]}}),
            200,
        ),
        case(
            A_UPDATE,
            Some(ADMIN_KEY),
            json!({"project": "gamma", "limits": {"deny_ips": ["x"]}}),
            400,
        ),
        case(A_DELETE, Some(ADMIN_KEY), json!({"project": "alpha"}), 400),
        case(A_DELETE, None, json!({"project": "gamma"}), 401),
        case(A_DELETE, Some(ALPHA_KEY), json!({"project": "gamma"}), 403),
        case(A_DELETE, Some(ADMIN_KEY), json!({"project": "nope"}), 404),
        case(A_KEY_ADD, Some(ADMIN_KEY), short, 400),
        case(
            A_KEY_ADD,
            None,
            json!({"project": "gamma", "key": hs256_key("k2")}),
            401,
        ),
        case(
            A_KEY_ADD,
            Some(ALPHA_KEY),
            json!({"project": "gamma", "key": hs256_key("k2")}),
            403,
        ),
        case(
            A_KEY_ADD,
            Some(ADMIN_KEY),
            json!({"project": "nope", "key": hs256_key("k2")}),
            404,
        ),
        case(
            A_KEY_ADD,
            Some(ADMIN_KEY),
            json!({"project": "gamma", "key": hs256_key("k1")}),
            409,
        ),
        case(
            A_KEY_RETIRE,
            Some(ADMIN_KEY),
            json!({"project": "alpha", "kid": "k1"}),
            400,
        ),
        case(
            A_KEY_RETIRE,
            None,
            json!({"project": "gamma", "kid": "k1"}),
            401,
        ),
        case(
            A_KEY_RETIRE,
            Some(ALPHA_KEY),
            json!({"project": "gamma", "kid": "k1"}),
            403,
        ),
        case(
            A_KEY_RETIRE,
            Some(ADMIN_KEY),
            json!({"project": "gamma", "kid": "zz"}),
            404,
        ),
        case(
            A_API_CREATE,
            Some(ADMIN_KEY),
            json!({"project": "alpha"}),
            400,
        ),
        case(A_API_CREATE, None, json!({"project": "gamma"}), 401),
        case(
            A_API_CREATE,
            Some(BETA_KEY),
            json!({"project": "gamma"}),
            403,
        ),
        case(
            A_API_CREATE,
            Some(ADMIN_KEY),
            json!({"project": "nope"}),
            404,
        ),
        case(
            A_API_DELETE,
            Some(ADMIN_KEY),
            json!({"project": "alpha", "id": "x"}),
            400,
        ),
        case(
            A_API_DELETE,
            None,
            json!({"project": "gamma", "id": "x"}),
            401,
        ),
        case(
            A_API_DELETE,
            Some(BETA_KEY),
            json!({"project": "gamma", "id": "x"}),
            403,
        ),
        case(
            A_API_DELETE,
            Some(ADMIN_KEY),
            json!({"project": "gamma", "id": "x"}),
            404,
        ),
        case(A_AUDIT, Some(ALPHA_KEY), json!({"x": 1}), 400),
        case(A_AUDIT, None, json!({}), 401),
        case(A_AUDIT, Some(ALPHA_KEY), json!({"project": "beta"}), 403),
        case(
            A_AUDIT,
            Some(ALPHA_KEY),
            json!({"project": "alpha", "limit": 5}),
            200,
        ),
    ];
    // Bans: a file project's too, by its own key.
    let mallory = json!({"project": "alpha", "user": "mallory"});
    cases.extend([
        case(
            A_BAN_ADD,
            Some(ALPHA_KEY),
            json!({"project": "alpha", "user": "mallory", "duration_secs": 60}),
            200,
        ),
        case(A_BAN_LIST, Some(ALPHA_KEY), json!({"project": "alpha"}), 200),
        case(A_BAN_LIFT, Some(ALPHA_KEY), mallory.clone(), 200),
        // Kept for the backend outage below (a lift then answers 503, not 404).
        case(
            A_BAN_ADD,
            Some(ADMIN_KEY),
            json!({"project": "gamma", "user": "u", "reason": "r"}),
            200,
        ),
        case(
            A_BAN_ADD,
            Some(ADMIN_KEY),
            json!({"project": "gamma", "user": "u", "duration_secs": 315_360_001}),
            400,
        ),
        case(
            A_BAN_ADD,
            Some(ADMIN_KEY),
            json!({"project": "gamma", "user": ""}),
            400,
        ),
        case(A_BAN_ADD, None, mallory.clone(), 401),
        case(A_BAN_ADD, Some(BETA_KEY), mallory.clone(), 403),
        case(
            A_BAN_ADD,
            Some(ADMIN_KEY),
            json!({"project": "nope", "user": "u"}),
            404,
        ),
        case(
            A_BAN_LIFT,
            Some(ADMIN_KEY),
            json!({"project": "gamma", "user": "u", "x": 1}),
            400,
        ),
        case(A_BAN_LIFT, None, mallory.clone(), 401),
        case(A_BAN_LIFT, Some(BETA_KEY), mallory.clone(), 403),
        // Lifted above: no ban in force.
        case(A_BAN_LIFT, Some(ALPHA_KEY), mallory, 404),
        case(
            A_BAN_LIST,
            Some(ADMIN_KEY),
            json!({"project": "gamma", "x": 1}),
            400,
        ),
        case(A_BAN_LIST, None, json!({"project": "alpha"}), 401),
        case(A_BAN_LIST, Some(BETA_KEY), json!({"project": "alpha"}), 403),
        case(A_BAN_LIST, Some(ADMIN_KEY), json!({"project": "nope"}), 404),
        // A JWK Set's CA is PEM text: a path would not exist on every node.
        case(
            A_UPDATE,
            Some(ADMIN_KEY),
            json!({"project": "gamma", "jwks": {"url": "https://login.example.com/jwks.json", "ca_file": "/etc/ca.pem"}}),
            400,
        ),
        case(
            A_UPDATE,
            Some(ADMIN_KEY),
            json!({"project": "gamma", "jwks": {"url": "http://login.example.com/jwks.json"}}),
            400,
        ),
        // A webhook's CA too: PEM text, never a path.
        case(
            A_UPDATE,
            Some(ADMIN_KEY),
            json!({"project": "gamma", "webhook": {"url": "https://hooks.example.com/h",
                "secret": "whsec-0123456789abcdef", "ca_file": "/etc/ca.pem"}}),
            400,
        ),
        case(
            A_UPDATE,
            Some(ADMIN_KEY),
            json!({"project": "gamma", "webhook": {"url": "https://hooks.example.com/h",
                "secret": "whsec-0123456789abcdef", "ca_pem": "not a certificate"}}),
            400,
        ),
        // A CA the edges could not trust is refused here, not when they fetch the set.
        case(
            A_UPDATE,
            Some(ADMIN_KEY),
            json!({"project": "gamma", "jwks": {"url": "https://login.example.com/jwks.json", "ca_pem": "not a certificate"}}),
            400,
        ),
        case(
            A_UPDATE,
            Some(ADMIN_KEY),
            json!({"project": "gamma", "jwks": {"url": "https://login.example.com/jwks.json",
                "ca_pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}}),
            400,
        ),
    ]);
    for path in ADMIN_PATHS {
        cases.push(too_large(path));
    }
    cases
}

/// The HTTP form of a gRPC publish request: the payload in base64.
fn as_json(p: &PublishRequest) -> Value {
    use herald_core::proto::v1::target::Kind;
    let target = match p.target.as_ref().and_then(|t| t.kind.as_ref()) {
        None => json!({}),
        Some(Kind::Broadcast(_)) => json!({"broadcast": {}}),
        Some(Kind::Group(g)) => json!({"group": g}),
        Some(Kind::User(u)) => json!({"user": u}),
    };
    json!({
        "project": p.project,
        "target": target,
        "b64": base64::engine::general_purpose::STANDARD.encode(&p.payload),
        "event": p.event,
        "idempotency_key": p.idempotency_key,
    })
}

/// The HTTP status and code name the test expects for a gRPC code (google.rpc.Code's mapping).
fn http_of(code: Code) -> (u16, &'static str) {
    match code {
        Code::InvalidArgument => (400, "INVALID_ARGUMENT"),
        Code::Unauthenticated => (401, "UNAUTHENTICATED"),
        Code::PermissionDenied => (403, "PERMISSION_DENIED"),
        Code::NotFound => (404, "NOT_FOUND"),
        other => panic!("no case uses {other:?}"),
    }
}

#[tokio::test]
async fn http_and_grpc_answer_alike_and_share_idempotency_keys() {
    let herald = herald()
        .router("http_listen", "127.0.0.1:0")
        .router("max_payload_bytes", 1024)
        .start()
        .await;
    let post = async |key: Option<&str>, path: &str, body: &Value| {
        let auth = key.map(|k| format!("Bearer {k}"));
        let head: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let r = http_request(
            herald.http,
            "POST",
            path,
            &head,
            body.to_string().as_bytes(),
        )
        .await;
        let body: Value = serde_json::from_str(&r.body).expect("JSON");
        (r.status, body)
    };
    let mut long_key = publish("alpha", To::User("u"), "1");
    long_key.idempotency_key = "k".repeat(129);
    let mut bad_event = publish("alpha", To::User("u"), "1");
    bad_event.event = "a b".into();
    let cases: Vec<(Option<&str>, PublishRequest)> = vec![
        (Some(ALPHA_KEY), publish("alpha", To::Group("a.*"), "1")),
        (Some(ALPHA_KEY), publish("alpha", To::Group("user/x"), "1")),
        (Some(ALPHA_KEY), publish("alpha", To::User(""), "1")),
        (Some(ALPHA_KEY), publish("Alpha", To::User("u"), "1")),
        (
            Some(ALPHA_KEY),
            publish("alpha", To::User("u"), &"x".repeat(1025)),
        ),
        (Some(ALPHA_KEY), long_key),
        (Some(ALPHA_KEY), bad_event),
        (Some(BETA_KEY), publish("alpha", To::User("u"), "1")),
        (Some(ADMIN_KEY), publish("gamma", To::User("u"), "1")),
        (
            Some("unknown-key-0123456789"),
            publish("alpha", To::User("u"), "1"),
        ),
        (None, publish("alpha", To::User("u"), "1")),
        (
            Some(ALPHA_KEY),
            PublishRequest {
                project: "alpha".into(),
                ..Default::default()
            },
        ),
    ];
    for (key, req) in cases {
        let status = herald
            .grpc(key)
            .await
            .publish(req.clone())
            .await
            .expect_err("refused");
        let (http_status, body) = post(key, "/v1/publish", &as_json(&req)).await;
        let (want_status, want_code) = http_of(status.code());
        assert_eq!(
            (http_status, body["code"].as_str(), body["message"].as_str()),
            (want_status, Some(want_code), Some(status.message())),
            "{req:?}"
        );
    }

    // A key used through gRPC is a repeat through HTTP, and the other way round.
    let mut c = herald.connect("alpha", &token("alpha", "idem")).await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let mut first = publish("alpha", To::User("idem"), "1");
    first.idempotency_key = "shared-1".into();
    send(&mut grpc, first.clone()).await;
    let (s, r) = post(Some(ALPHA_KEY), "/v1/publish", &as_json(&first)).await;
    assert_eq!(
        (s, r["resolution"].as_str()),
        (200, Some("RESOLUTION_DUPLICATE"))
    );
    let mut second = publish("alpha", To::User("idem"), "2");
    second.idempotency_key = "shared-2".into();
    let (s, r) = post(Some(ALPHA_KEY), "/v1/publish", &as_json(&second)).await;
    assert_eq!(
        (s, r["resolution"].as_str()),
        (200, Some("RESOLUTION_DELIVERED"))
    );
    let again = send(&mut grpc, second).await;
    assert_eq!(
        again.resolution(),
        herald_core::proto::v1::Resolution::Duplicate
    );
    assert_eq!(c.next_msg().await["data"], 1);
    assert_eq!(c.next_msg().await["data"], 2);
    c.expect_silence(std::time::Duration::from_millis(200))
        .await;

    // Pages through HTTP are gRPC's pages.
    let mut clients = Vec::new();
    for _ in 0..7 {
        clients.push(herald.connect("alpha", &token("alpha", "paged")).await);
    }
    let mut http_ids = Vec::new();
    let mut token_ = String::new();
    loop {
        let (s, r) = post(
            Some(ALPHA_KEY),
            "/v1/connections/list",
            &json!({"project": "alpha", "user": "paged", "page_size": 3, "page_token": token_}),
        )
        .await;
        assert_eq!(s, 200, "{r}");
        let page: Vec<String> = r["connections"]
            .as_array()
            .expect("connections")
            .iter()
            .map(|c| c["id"].as_str().expect("id").to_string())
            .collect();
        assert!(page.len() <= 3);
        http_ids.extend(page);
        token_ = r["next_page_token"].as_str().expect("token").to_string();
        if token_.is_empty() {
            break;
        }
    }
    let all = grpc
        .list_connections(ListConnectionsRequest {
            project: "alpha".into(),
            of: Some(list_connections_request::Of::User("paged".into())),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let grpc_ids: Vec<String> = all.connections.into_iter().map(|c| c.id).collect();
    assert_eq!(http_ids.len(), 7);
    assert_eq!(http_ids, grpc_ids);
    let counts: HashMap<String, u64> = grpc
        .count_connections(herald_core::proto::v1::CountConnectionsRequest::default())
        .await
        .expect("count")
        .into_inner()
        .connections;
    let (_, r) = post(Some(ALPHA_KEY), "/v1/connections/count", &json!({})).await;
    assert_eq!(r["connections"]["alpha"], json!(counts["alpha"]));

    // A body without a declared length is cut at the limit (64 KiB for a count).
    let mut chunked = Vec::new();
    for _ in 0..80 {
        chunked.extend_from_slice(format!("400\r\n{}\r\n", " ".repeat(0x400)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let auth = format!("Bearer {ALPHA_KEY}");
    let r = http_request(
        herald.http,
        "POST",
        "/v1/connections/count",
        &[("authorization", &auth), ("transfer-encoding", "chunked")],
        &chunked,
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            413,
            r#"{"code":"OUT_OF_RANGE","message":"body: larger than 65536 bytes"}"#
        )
    );

    // Every answer is counted, by call and status.
    herald
        .wait_metric(
            r#"herald_router_http_requests_total{call="publish",status="400"}"#,
            8.0,
        )
        .await;
    herald
        .wait_metric(
            r#"herald_router_http_requests_total{call="count",status="413"}"#,
            1.0,
        )
        .await;
}

#[tokio::test]
async fn the_http_listener_is_off_unless_configured() {
    let herald = herald().start().await;
    assert_eq!(herald.http, SocketAddr::from(([0, 0, 0, 0], 0)));
}

#[tokio::test]
async fn a_client_slow_with_its_headers_or_idle_is_closed_and_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let herald = herald()
        .router("http_listen", "127.0.0.1:0")
        .router("http_header_timeout_ms", 500)
        .start()
        .await;
    // A slowloris: a request line and one header, then nothing; and a connection that never
    // sends a byte.
    let mut slow = tokio::net::TcpStream::connect(herald.http)
        .await
        .expect("connect");
    slow.write_all(b"POST /v1/connections/count HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    let mut silent = tokio::net::TcpStream::connect(herald.http)
        .await
        .expect("connect");
    // Meanwhile an ordinary request is answered.
    let r = http_request(herald.http, "POST", "/v1/connections/count", &[], b"{}").await;
    assert_eq!(r.status, 401, "answered: {}", r.body);
    for (name, conn) in [("slowloris", &mut slow), ("silent", &mut silent)] {
        let mut buf = [0u8; 512];
        let read = tokio::time::timeout(WAIT, async {
            loop {
                match conn.read(&mut buf).await {
                    // hyper may answer 408 before closing; the end of the stream is what counts.
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(read.is_ok(), "{name}: still open after {WAIT:?}");
    }
}
