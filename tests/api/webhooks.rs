//! `/v1/webhooks`: admins manage an account's webhooks; bad input is refused and changes nothing.

use reqwest::StatusCode;
use serde_json::json;
use switchboard::config::Command;

use crate::{
    both_backends,
    helpers::{Backend, Storage, spawn_app, spawn_with},
};

const SECRET: &str = "a-long-enough-secret-1234";

both_backends! {
    async fn an_admin_creates_lists_updates_and_deletes_a_webhook(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let created = app
            .create_webhook(
                &admin,
                json!({ "url": "https://hooks.example.com/in", "secret": SECRET,
                        "events": ["message.created", "conversation.queued"] }),
            )
            .await;
        let id = created["id"].as_i64().unwrap();
        // Kinds come back in their canonical order; the secret only as its last four characters.
        assert_eq!(created["events"], json!(["conversation.queued", "message.created"]));
        assert_eq!(created["active"], true);
        assert_eq!(created["secret"], "••••1234");
        assert!(!created.to_string().contains(SECRET));

        let listed = app.webhooks(&admin).await;
        assert_eq!(listed["items"].as_array().unwrap().len(), 1);
        assert!(!listed.to_string().contains(SECRET));

        let updated = app
            .update_webhook(
                &admin,
                id,
                json!({ "active": false, "events": ["sla.breached"], "secret": "another-secret-abcd" }),
            )
            .await;
        assert_eq!(updated["active"], false);
        assert_eq!(updated["events"], json!(["sla.breached"]));
        assert_eq!(updated["secret"], "••••abcd");

        let deliveries = app.webhook_deliveries(&admin, id, None).await;
        assert_eq!(deliveries["items"], json!([]));

        assert_eq!(app.try_delete_webhook(&admin, id).await.status, StatusCode::NO_CONTENT);
        assert!(app.webhook(&admin, id).await["deletedAt"].is_string());
        assert_eq!(app.webhooks(&admin).await["items"], json!([]));
        // The audit trail names changes, never the secret.
        let audit = crate::helpers::eventually(std::time::Duration::from_secs(10), "audit rows", || async {
            let reply = app.try_audit(&admin, None).await;
            let rows = reply.body["items"].as_array().cloned().unwrap_or_default();
            (rows.iter().filter(|r| r["subjectType"] == "webhook").count() >= 3).then_some(reply.body)
        })
        .await;
        assert!(!audit.to_string().contains(SECRET));
        assert!(!audit.to_string().contains("another-secret-abcd"));
    }
}

both_backends! {
    async fn bad_webhooks_are_refused_and_change_nothing(backend: Backend) {
        // Private targets are refused unless the setting allows them (tests allow by default).
        let app = spawn_with(Storage::new(backend).await, Command::All, |s| {
            s.webhook_allow_private = false;
        })
        .await;
        let admin = app.admin_token().await;
        let good = json!({ "url": "https://93.184.216.34/hook", "secret": SECRET, "events": ["message.created"] });
        let long_url = format!("https://example.com/{}", "a".repeat(2040));
        // 1,020 characters as sent, 3,020 as stored once `{` and `}` are percent-encoded.
        let long_once_encoded = format!("https://example.com/{}", "{}".repeat(500));
        let cases = [
            ("url", json!("ftp://example.com/hook"), "http or https"),
            ("url", json!("javascript:alert(1)"), "http or https"),
            ("url", json!("not a url"), "valid URL"),
            ("url", json!(long_url), "2048"),
            ("url", json!(long_once_encoded), "2048"),
            ("url", json!("http://127.0.0.1:9000/hook"), "private"),
            ("url", json!("http://10.0.0.7/hook"), "private"),
            ("url", json!("http://192.168.1.10/hook"), "private"),
            ("url", json!("http://169.254.169.254/latest/meta-data"), "private"),
            ("url", json!("http://0.0.0.0/hook"), "private"),
            ("url", json!("http://[::1]/hook"), "private"),
            ("url", json!("http://[::ffff:127.0.0.1]/hook"), "private"),
            // IPv6 forms that reach an IPv4 address, and tunnels that cannot be checked.
            ("url", json!("http://[::127.0.0.1]/hook"), "private"),
            ("url", json!("http://[64:ff9b::a9fe:a9fe]/latest/meta-data"), "private"),
            ("url", json!("http://[64:ff9b:1::808:808]/hook"), "private"),
            ("url", json!("http://[2002:a00:1::1]/hook"), "private"),
            ("url", json!("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/hook"), "private"),
            ("url", json!("http://[fec0::1]/hook"), "private"),
            ("url", json!("http://localhost:8080/hook"), "private"),
            ("secret", json!("short"), "at least 16"),
            ("secret", json!("sixteen chars but has spaces"), "spaces"),
            ("secret", json!("x".repeat(300)), "at most 256"),
            ("events", json!(["message.created", "message.deleted"]), "unknown event kind"),
            ("events", json!([]), "at least one"),
            ("events", json!("message.created"), ""),
        ];
        for (field, value, says) in cases {
            let mut body = good.clone();
            body[field] = value.clone();
            let reply = app.post("/v1/webhooks", &admin, body).await;
            assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{field}={value}: {:?}", reply.body);
            assert_eq!(reply.code(), "validation_failed");
            let message = reply.body["error"]["message"].as_str().unwrap();
            assert!(message.contains(says), "{field}={value}: {message}");
        }
        let unknown_field = app.post("/v1/webhooks", &admin, json!({ "url": "https://93.184.216.34/", "secret": SECRET, "events": ["agent.status"], "extra": 1 })).await;
        assert_eq!(unknown_field.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(app.webhooks(&admin).await["items"], json!([]));

        // A valid one, then bad updates leave it as it was.
        let created = app.create_webhook(&admin, good.clone()).await;
        let id = created["id"].as_i64().unwrap();
        for body in [
            json!({ "url": "http://127.0.0.1/x" }),
            json!({ "secret": "short" }),
            json!({ "events": ["nope"] }),
            json!({ "active": false, "url": "gopher://x" }),
        ] {
            let reply = app.patch(&format!("/v1/webhooks/{id}"), &admin, body.clone()).await;
            assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {:?}", reply.body);
        }
        let now = app.webhook(&admin, id).await;
        assert_eq!(now["url"], created["url"]);
        assert_eq!(now["active"], true);
        assert_eq!(now["events"], created["events"]);
        assert_eq!(now["updatedAt"], created["updatedAt"]);

        // Other roles and other accounts see nothing and change nothing.
        let (_, agent) = app.agent_with_role(&admin, "agent").await;
        let (_, supervisor) = app.agent_with_role(&admin, "supervisor").await;
        for token in [&agent, &supervisor] {
            assert_eq!(app.try_webhooks(token).await.status, StatusCode::FORBIDDEN);
            assert_eq!(app.try_create_webhook(token, good.clone()).await.status, StatusCode::FORBIDDEN);
            assert_eq!(app.try_delete_webhook(token, id).await.status, StatusCode::FORBIDDEN);
        }
        let other = app.second_account_admin().await;
        assert_eq!(app.try_webhook(&other, id).await.status, StatusCode::NOT_FOUND);
        assert_eq!(app.try_webhook_deliveries(&other, id, None).await.status, StatusCode::NOT_FOUND);
        assert_eq!(app.try_update_webhook(&other, id, json!({ "active": false })).await.status, StatusCode::NOT_FOUND);
        assert_eq!(app.try_delete_webhook(&other, id).await.status, StatusCode::NOT_FOUND);
        assert_eq!(app.webhooks(&other).await["items"], json!([]));
        let still = app.webhook(&admin, id).await;
        assert_eq!(still["active"], true);
        assert!(still["deletedAt"].is_null());
        // Bad query parameters.
        assert_eq!(app.get(&format!("/v1/webhooks/{id}/deliveries?status=lost"), &admin).await.status, StatusCode::BAD_REQUEST);
        assert_eq!(app.get("/v1/webhooks/abc", &admin).await.status, StatusCode::BAD_REQUEST);
    }
}
