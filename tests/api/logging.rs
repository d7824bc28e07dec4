//! What the log must never carry.

use serde_json::json;

use crate::{helpers::*, process::Server, sio};

/// With the wire-level libraries' debug and trace logs asked for in `RUST_LOG` (Socket.IO,
/// WebSocket, HTTP), neither an agent's token nor a visitor's session token reaches the log; `SWITCHBOARD_LOG_SOCKET_PAYLOADS=1` lets them
/// through (which shows the check would see them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_credentials_stay_out_of_the_log() {
    const DEBUG: (&str, &str) = (
        "RUST_LOG",
        "info,socketioxide=trace,engineioxide=trace,tungstenite=trace,tokio_tungstenite=trace,hyper=trace,h2=trace",
    );
    async fn credentials_logged(env: &[(&str, &str)]) -> (bool, bool) {
        let server = Server::start(env).await;
        let login = server
            .post(
                "/v1/auth/login",
                json!({ "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD }),
            )
            .await;
        let token = login["token"].as_str().expect("a token").to_owned();
        let session = server.post("/v1/widget/session", json!({})).await;
        let session_token = session["sessionToken"]
            .as_str()
            .expect("a session")
            .to_owned();
        let agent = sio::connect(&server.address, "/agents", json!({ "token": token }))
            .await
            .expect("the agent connects");
        let visitor = sio::connect(
            &server.address,
            "/visitors",
            json!({ "sessionToken": session_token }),
        )
        .await
        .expect("the visitor connects");
        agent.sync(json!({})).await;
        visitor.sync(json!({})).await;
        agent.disconnect().await;
        visitor.disconnect().await;
        let log = server.stop();
        (log.contains(&token), log.contains(&session_token))
    }
    assert_eq!(
        credentials_logged(&[DEBUG]).await,
        (false, false),
        "(agent token, session token) in the log"
    );
    let (_, session_logged) =
        credentials_logged(&[DEBUG, ("SWITCHBOARD_LOG_SOCKET_PAYLOADS", "true")]).await;
    assert!(
        session_logged,
        "the opt-in lets the libraries' debug log through"
    );
}
