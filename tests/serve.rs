//! The control plane's policy endpoints, in process (no sockets) and once over a real
//! socket bound to port 0.

// Helpers panic on purpose: a broken fixture should fail the test that uses it.
#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use superpeer::policy::{EMBEDDED_POLICY, PolicyEngine, PolicyLimits};
use superpeer::serve::{self, ControlPlane, PolicySource};
use tower::ServiceExt;

fn guest(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/{name}.wasm", env!("SUPERPEER_GUEST_DIR"))).unwrap()
}

fn control(token: Option<&str>) -> ControlPlane {
    let limits = PolicyLimits {
        call_deadline: std::time::Duration::from_millis(500),
        init_deadline: std::time::Duration::from_millis(2000),
        max_component_bytes: 4 << 20,
        ..PolicyLimits::default()
    };
    let engine = PolicyEngine::new(limits).unwrap();
    let policy = engine.compile(EMBEDDED_POLICY).unwrap();
    ControlPlane::new(engine, policy, PolicySource::Embedded, token.map(String::from))
}

async fn call(control: &ControlPlane, request: Request<Body>) -> (StatusCode, Value) {
    let response = control.clone().router().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!("{status}: body is not JSON ({e}): {}", String::from_utf8_lossy(&bytes))
    });
    (status, json)
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn post(path: &str, body: Vec<u8>) -> Request<Body> {
    Request::post(path).header("content-type", "application/wasm").body(Body::from(body)).unwrap()
}

#[tokio::test]
async fn reports_the_embedded_policy() {
    let control = control(None);
    let (status, body) = call(&control, get("/policy")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["policy"]["name"], "pml");
    assert_eq!(body["policy"]["source"], "embedded");
    assert_eq!(body["previous"], Value::Null);
    assert_eq!(body["limits"]["call_deadline"], 500);
}

#[tokio::test]
async fn accepts_a_good_policy_and_keeps_the_old_one_as_previous() {
    let control = control(None);
    let (status, body) = call(&control, post("/policy", guest("superpeer_test_counter"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["policy"]["name"], "counter");
    let (_, body) = call(&control, get("/policy")).await;
    assert_eq!(body["policy"]["name"], "counter");
    assert_eq!(body["policy"]["source"], "upload");
    assert_eq!(body["previous"]["name"], "pml");
    assert_eq!(control.current_policy().meta().name, "counter");
}

#[tokio::test]
async fn refuses_bad_policies_with_a_reason_and_keeps_the_running_one() {
    let control = control(None);
    let cases: [(Vec<u8>, StatusCode, &str); 5] = [
        (b"garbage".to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "not WebAssembly"),
        (
            guest("superpeer_test_wrong_world"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "does not implement",
        ),
        // Needs settings the canary does not give it, so its init refuses.
        (guest("superpeer_test_misbehave"), StatusCode::UNPROCESSABLE_ENTITY, "refused to start"),
        (Vec::new(), StatusCode::BAD_REQUEST, "empty body"),
        (vec![0; 5 << 20], StatusCode::PAYLOAD_TOO_LARGE, "length limit"),
    ];
    for (body, expected, reason) in cases {
        let (status, answer) = call(&control, post("/policy", body)).await;
        assert_eq!(status, expected, "{answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(reason), "{error:?} should say {reason:?}");
    }
    assert_eq!(control.current_policy().meta().name, "pml");
}

#[tokio::test]
async fn enforces_the_access_token() {
    let control = control(Some("s3cret"));
    let (status, body) = call(&control, get("/policy")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"].as_str().unwrap().contains("X-ACCESS-TOKEN"));
    let wrong =
        Request::get("/policy").header("X-ACCESS-TOKEN", "guess").body(Body::empty()).unwrap();
    assert_eq!(call(&control, wrong).await.0, StatusCode::UNAUTHORIZED);
    let upload = Request::post("/policy")
        .header("X-ACCESS-TOKEN", "guess")
        .body(Body::from(guest("superpeer_test_counter")))
        .unwrap();
    assert_eq!(call(&control, upload).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(control.current_policy().meta().name, "pml");
    let right =
        Request::get("/policy").header("X-ACCESS-TOKEN", "s3cret").body(Body::empty()).unwrap();
    assert_eq!(call(&control, right).await.0, StatusCode::OK);
}

#[tokio::test]
async fn wrong_methods_get_a_json_405() {
    let request = Request::delete("/policy").body(Body::empty()).unwrap();
    let (status, body) = call(&control(None), request).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body["error"].is_string());
}

#[tokio::test]
async fn unknown_paths_get_a_json_404() {
    let (status, body) = call(&control(None), get("/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
}

#[tokio::test]
async fn serves_over_a_real_socket_and_shuts_down() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve::run(listener, control(None), async {
        let _ = stopped.await;
    }));

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /policy HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"name\":\"pml\""), "{response}");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
