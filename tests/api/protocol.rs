//! The socket protocol is machine-readable (`docs/asyncapi.json`, AsyncAPI 3): every payload a
//! real chat pushes, every request it sends and every acknowledgement it gets must match the
//! document, and every push the document names for this chat must have been heard.

use std::collections::HashMap;

use serde_json::{Value, json};
use switchboard::config::Command;

use crate::{
    helpers::*,
    sio::{Heard, Sio},
};

/// The document, and a validator per (namespace, kind, event) built from its messages.
struct Protocol {
    validators: HashMap<String, jsonschema::Validator>,
}

impl Protocol {
    fn load() -> Self {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/asyncapi.json");
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("the document"))
                .expect("the document is JSON");
        assert_eq!(doc["asyncapi"], "3.0.0");
        let messages = doc["components"]["messages"].as_object().expect("messages");
        let validators = messages
            .keys()
            .map(|key| {
                // The whole document is the schema's root, so `$ref`s into it resolve.
                let mut schema = doc.clone();
                schema["$ref"] = json!(format!("#/components/messages/{key}/payload"));
                let validator = jsonschema::validator_for(&schema)
                    .unwrap_or_else(|err| panic!("{key}: not a valid schema: {err}"));
                (key.clone(), validator)
            })
            .collect();
        Self { validators }
    }

    /// Checks `payload` against message `key`; returns the complaints.
    fn check(&self, key: &str, payload: &Value) -> Vec<String> {
        let Some(validator) = self.validators.get(key) else {
            return vec![format!("{key} is not in the document: {payload}")];
        };
        validator
            .iter_errors(payload)
            .map(|err| format!("{key}: {err} at {} in {payload}", err.instance_path()))
            .collect()
    }

    /// Checks what one socket of namespace `ns` heard; returns the complaints and the pushes seen.
    fn check_socket(&self, ns: &str, heard: &Heard) -> (Vec<String>, Vec<String>) {
        let mut complaints = Vec::new();
        let mut seen = Vec::new();
        for (event, payload) in &heard.pushes {
            let key = format!("{ns}.push.{}", event.replace(':', "."));
            complaints.extend(self.check(&key, payload));
            seen.push(event.clone());
        }
        for (event, sent, ack) in &heard.requests {
            complaints.extend(self.check(&format!("{ns}.ack"), ack));
            // What the server accepted must be what the document allows.
            if ack["ok"] == true {
                let key = format!("{ns}.request.{}", event.replace(':', "."));
                complaints.extend(self.check(&key, sent));
            }
        }
        (complaints, seen)
    }
}

fn is(conversation: i64) -> impl Fn(&Value) -> bool {
    move |payload| payload["conversationId"] == conversation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_socket_payload_matches_the_asyncapi_document() {
    let protocol = Protocol::load();
    let app = spawn_with(
        Storage::new(Backend::Embedded).await,
        Command::All,
        |settings| {
            settings.stats_interval_seconds = 1;
        },
    )
    .await;
    let admin = app.admin_token().await;
    let group = app.default_group(&admin).await;
    let (_, other_group) = {
        let created = app.create_group(&admin, json!({ "name": "Billing" })).await;
        ((), created["id"].as_i64().unwrap())
    };
    let mut supervisor = app.agent_socket(&admin).await;
    let (_, token) = app.agent_in_group(&admin, group, 3).await;
    let (_, second_token) = app.agent_in_group(&admin, group, 3).await;
    let mut agent = app.agent_socket(&token).await;
    let mut second = app.agent_socket(&second_token).await;

    // A chat waits, then the agent comes online and takes it.
    let (conversation, session) = app.visitor(json!({ "initialMessage": "hello?" })).await;
    let mut visitor = app.visitor_socket(&session).await;
    agent
        .next_where("conversation:queued", is(conversation))
        .await;
    visitor.next("queue:position").await;
    agent.set_status("online").await;
    agent
        .next_where("conversation:assigned", is(conversation))
        .await;
    visitor.next("conversation:assigned").await;
    supervisor.next("queue:update").await;
    supervisor.next("agent:status").await;
    supervisor.next("stats:update").await;

    // Both ways: messages, typing, seen, lists, syncs.
    let sent = visitor
        .send_message(json!({ "content": "my order", "clientMessageId": "v-1" }))
        .await;
    agent
        .next_where("message:new", |e| e["id"] == sent["id"])
        .await;
    agent
        .set_typing(json!({ "conversationId": conversation, "typing": true }))
        .await;
    visitor.next("typing").await;
    visitor.set_typing(json!({ "typing": false })).await;
    agent.next("typing").await;
    agent
        .ok(
            "message:seen",
            json!({ "conversationId": conversation, "eventId": sent["id"] }),
        )
        .await;
    visitor.next("message:seen").await;
    let reply = agent
        .send_message(json!({ "conversationId": conversation, "content": "on it" }))
        .await;
    visitor
        .next_where("message:new", |e| e["id"] == reply["id"])
        .await;
    visitor
        .ok("message:seen", json!({ "eventId": reply["id"] }))
        .await;
    agent.next("message:seen").await;
    agent
        .list_messages(json!({ "conversationId": conversation, "limit": 10 }))
        .await;
    visitor.list_messages(json!({ "after": 0 })).await;
    agent.sync(json!({})).await;
    visitor.sync(json!({})).await;
    supervisor
        .ok(
            "conversation:join",
            json!({ "conversationId": conversation }),
        )
        .await;
    supervisor
        .ok(
            "conversation:leave",
            json!({ "conversationId": conversation }),
        )
        .await;

    // Refusals answer with the document's error shape.
    agent
        .refused("message:send", json!({ "conversationId": conversation }))
        .await;
    agent
        .refused("conversation:pickup", json!({ "conversationId": 999_999 }))
        .await;
    agent.refused("no:such:event", json!({})).await;

    // A transfer to the second agent, one to a group, a pick-up, and both kinds of close.
    second.set_status("online").await;
    agent
        .ok("conversation:transfer", json!({ "conversationId": conversation, "agentId": second_id(&app, &second_token).await, "reason": "billing" }))
        .await;
    agent
        .next_where("conversation:unassigned", is(conversation))
        .await;
    second
        .next_where("conversation:assigned", is(conversation))
        .await;
    second
        .ok(
            "conversation:transfer",
            json!({ "conversationId": conversation, "groupId": other_group }),
        )
        .await;
    second
        .next_where("conversation:unassigned", is(conversation))
        .await;
    let (waiting, _) = app
        .visitor(json!({ "initialMessage": "anyone?", "groupId": other_group }))
        .await;
    supervisor.set_status("online").await;
    let picked = supervisor
        .ok("conversation:pickup", json!({ "conversationId": waiting }))
        .await;
    assert_eq!(picked["id"], waiting);
    supervisor
        .ok(
            "conversation:close",
            json!({ "conversationId": waiting, "reason": "done" }),
        )
        .await;
    supervisor
        .next_where("conversation:closed", is(waiting))
        .await;
    visitor.ok("conversation:end", json!({})).await;
    visitor.next("conversation:closed").await;

    let mut complaints = Vec::new();
    let mut heard: HashMap<&str, Vec<String>> = HashMap::new();
    for (ns, socket) in [
        ("agents", &supervisor),
        ("agents", &agent),
        ("agents", &second),
        ("visitors", &visitor),
    ] {
        let (wrong, seen) = protocol.check_socket(ns, &socket.heard());
        complaints.extend(wrong);
        heard.entry(ns).or_default().extend(seen);
    }
    assert!(
        complaints.is_empty(),
        "payloads the document does not allow:\n{}",
        complaints.join("\n")
    );
    for (ns, events) in [
        (
            "agents",
            &[
                "conversation:queued",
                "conversation:assigned",
                "conversation:unassigned",
                "conversation:closed",
                "message:new",
                "typing",
                "message:seen",
                "agent:status",
                "queue:update",
                "stats:update",
            ][..],
        ),
        (
            "visitors",
            &[
                "conversation:assigned",
                "conversation:closed",
                "message:new",
                "typing",
                "message:seen",
                "queue:position",
            ][..],
        ),
    ] {
        for event in events {
            assert!(
                heard[ns].iter().any(|e| e == event),
                "{ns} never heard {event}"
            );
        }
    }
    for socket in [supervisor, agent, second, visitor] {
        Sio::disconnect(socket).await;
    }
}

async fn second_id(app: &TestApp, token: &str) -> i64 {
    app.me(token).await["id"].as_i64().unwrap()
}
