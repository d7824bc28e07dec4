//! Webhook and e-mail deliveries against real receivers: a signed HTTP receiver that fails,
//! hangs, redirects or floods, and a real SMTP server (aiosmtpd) whose mails are parsed.

use std::time::Duration;

use chrono::Utc;
use entity::{deliveries, webhooks};
use jobs::{Job, notify::Outcome, webhook::DeliverWebhook};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};
use serde_json::{Value, json};
use switchboard::config::{Command, Settings};

use crate::{
    both_backends,
    helpers::{Backend, Storage, TestApp, eventually, spawn_with},
    receivers::{HUGE, Receiver, SmtpSink, free_port},
};

pub(crate) const SECRET: &str = "receiver-secret-0001";

/// Short backoffs and timeouts so a whole budget runs in seconds.
fn quick(settings: &mut Settings) {
    settings.notify.webhook_attempts = 3;
    settings.notify.webhook_backoff_ms = 200;
    settings.notify.webhook_timeout_ms = 800;
    settings.notify.email_attempts = 2;
    settings.notify.email_backoff_ms = 200;
    settings.notify.sla_digest_seconds = 2;
}

pub(crate) async fn app_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_with(Storage::new(backend).await, Command::All, |s| {
        quick(s);
        tweak(s);
    })
    .await
}

pub(crate) async fn webhook(app: &TestApp, admin: &str, url: &str, events: Value) -> i64 {
    app.create_webhook(
        admin,
        json!({ "url": url, "secret": SECRET, "events": events }),
    )
    .await["id"]
        .as_i64()
        .unwrap()
}

/// The webhook's deliveries once `done` of them are finished (delivered or dead).
pub(crate) async fn finished(app: &TestApp, admin: &str, hook: i64, done: usize) -> Vec<Value> {
    eventually(
        Duration::from_secs(30),
        &format!("{done} finished deliveries"),
        || async {
            let reply = app.try_webhook_deliveries(admin, hook, None).await;
            let items = reply.body["items"].as_array().cloned().unwrap_or_default();
            let finished = items.iter().filter(|d| d["status"] != "pending").count();
            (finished >= done).then_some(items)
        },
    )
    .await
}

/// Raises `outcome` as the change that implies it would: staged in the outbox, then told.
pub(crate) async fn raise(app: &TestApp, outcome: Outcome) {
    let staged = app.state.outbox.stage(app.db(), [outcome]).await.unwrap();
    staged.tell(&*app.state.notifier);
}

both_backends! {
    async fn a_failing_receiver_sees_signed_retries_then_success_in_conversation_order(backend: Backend) {
        let receiver = Receiver::start(SECRET).await;
        let app = app_with(backend, |_| {}).await;
        let admin = app.admin_token().await;
        let hook = webhook(&app, &admin, &receiver.url("/flaky"), json!(["message.created"])).await;
        receiver.fail_next(2);
        let (conversation, visitor) = app.visitor(json!({ "name": "Vera" })).await;
        for content in ["first", "second", "third"] {
            app.visitor_says(&visitor, content).await;
        }
        let rows = finished(&app, &admin, hook, 3).await;
        assert!(rows.iter().all(|d| d["status"] == "delivered"), "{rows:?}");
        assert_eq!(rows.iter().map(|d| d["attempts"].as_i64().unwrap()).collect::<Vec<_>>(), [3, 1, 1]);

        let hits = receiver.hits_on("/flaky");
        let seen: Vec<(&str, u16)> = hits
            .iter()
            .map(|h| (h.body["data"]["event"]["content"].as_str().unwrap(), h.status))
            .collect();
        // The first message's retries come before the later messages, which wait for it.
        assert_eq!(seen, [("first", 500), ("first", 500), ("first", 200), ("second", 200), ("third", 200)]);
        for hit in &hits {
            assert!(hit.signed, "bad signature on {hit:?}");
            assert_eq!(hit.body["kind"], "message.created");
            assert_eq!(hit.body["data"]["conversationId"], conversation);
            assert_eq!(hit.body["id"].as_str().unwrap(), hit.delivery_header);
            assert!(hit.body["timestamp"].is_string());
        }
        // A retry is the same delivery (same id); different deliveries have different ids.
        assert_eq!(hits[0].delivery_header, hits[2].delivery_header);
        assert_ne!(hits[2].delivery_header, hits[3].delivery_header);
        assert_eq!(rows[0]["deliveryId"].as_str().unwrap(), hits[0].delivery_header);
    }
}

both_backends! {
    async fn a_dead_endpoint_ends_dead_after_its_budget_and_the_next_delivery_goes(backend: Backend) {
        let receiver = Receiver::start(SECRET).await;
        let app = app_with(backend, |_| {}).await;
        let admin = app.admin_token().await;
        let hook = webhook(&app, &admin, &receiver.url("/down"), json!(["message.created"])).await;
        let (_, visitor) = app.visitor(json!({})).await;
        app.visitor_says(&visitor, "one").await;
        app.visitor_says(&visitor, "two").await;
        let rows = finished(&app, &admin, hook, 2).await;
        for row in &rows {
            assert_eq!(row["status"], "dead", "{row:?}");
            assert_eq!(row["attempts"], 3);
            assert_eq!(row["lastStatusCode"], 503);
            assert_eq!(row["lastError"], "HTTP 503 Service Unavailable");
        }
        let dead = app.webhook_deliveries(&admin, hook, Some("dead")).await;
        assert_eq!(dead["items"].as_array().unwrap().len(), 2);
        let order: Vec<String> = receiver
            .hits_on("/down")
            .iter()
            .map(|h| h.body["data"]["event"]["content"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(order, ["one", "one", "one", "two", "two", "two"]);
        // Nothing more once dead.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(receiver.hits_on("/down").len(), 6);
    }
}

both_backends! {
    async fn hanging_redirecting_and_flooding_receivers_are_bounded(backend: Backend) {
        let receiver = Receiver::start(SECRET).await;
        let app = app_with(backend, |s| s.notify.webhook_attempts = 2).await;
        let admin = app.admin_token().await;
        let hang = webhook(&app, &admin, &receiver.url("/hang"), json!(["conversation.queued"])).await;
        let redirect = webhook(&app, &admin, &receiver.url("/redirect"), json!(["conversation.queued"])).await;
        let huge = webhook(&app, &admin, &receiver.url("/huge"), json!(["conversation.queued"])).await;
        app.visitor(json!({})).await;

        let hung = finished(&app, &admin, hang, 1).await;
        assert_eq!(hung[0]["status"], "dead");
        assert_eq!(hung[0]["attempts"], 2);
        assert!(hung[0]["lastError"].as_str().unwrap().starts_with("timed out"), "{hung:?}");

        let redirected = finished(&app, &admin, redirect, 1).await;
        assert_eq!(redirected[0]["status"], "dead");
        assert_eq!(redirected[0]["lastStatusCode"], 302);
        // Each attempt is one request: the redirect to itself is never followed.
        assert_eq!(receiver.hits_on("/redirect").len(), 2);

        let flooded = finished(&app, &admin, huge, 1).await;
        assert_eq!(flooded[0]["status"], "delivered");
        assert_eq!(receiver.hits_on("/huge").len(), 1);
        // The 64 MiB body was abandoned after its first bytes (what sits in socket buffers aside).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(receiver.huge_sent() < HUGE / 4, "{} bytes streamed", receiver.huge_sent());
    }
}

/// A pending delivery row for `hook`, written directly (no job submitted).
async fn pending_row(app: &TestApp, hook: i64, created_ago: Duration) -> i64 {
    let row = pending(hook, "agent:1", created_ago)
        .insert(app.db())
        .await
        .unwrap();
    row.id
}

/// A pending `agent.status` delivery for `hook` in line `order_key`, created `created_ago`.
pub(crate) fn pending(
    hook: i64,
    order_key: &str,
    created_ago: Duration,
) -> deliveries::ActiveModel {
    let at = Utc::now() - chrono::Duration::from_std(created_ago).unwrap();
    deliveries::ActiveModel {
        account_id: Set(1),
        channel: Set("webhook".into()),
        webhook_id: Set(Some(hook)),
        delivery_key: Set(ulid::Ulid::new().to_string()),
        kind: Set("agent.status".into()),
        order_key: Set(order_key.into()),
        recipient: Set(None),
        payload: Set(json!({ "agentId": 1, "status": "online", "acceptingChats": true })),
        status: Set("pending".into()),
        attempts: Set(0),
        max_attempts: Set(3),
        last_error: Set(None),
        last_status_code: Set(None),
        next_attempt_at: Set(None),
        claimed_until: Set(None),
        created_at: Set(at),
        updated_at: Set(at),
        delivered_at: Set(None),
        ..Default::default()
    }
}

both_backends! {
    async fn running_a_delivery_job_twice_sends_once(backend: Backend) {
        let receiver = Receiver::start(SECRET).await;
        let app = app_with(backend, |_| {}).await;
        let admin = app.admin_token().await;
        let hook = webhook(&app, &admin, &receiver.url("/ok"), json!(["agent.status"])).await;
        let id = pending_row(&app, hook, Duration::ZERO).await;
        let ctx = app.state.job_context();
        let job = DeliverWebhook { delivery_id: id };
        // Two copies at once (two workers), then a late redelivery.
        let (a, b) = tokio::join!(job.clone().run(&ctx), job.clone().run(&ctx));
        let summaries = [a.unwrap(), b.unwrap()];
        let late = job.run(&ctx).await.unwrap();
        assert_eq!(receiver.hits_on("/ok").len(), 1, "{summaries:?} {late}");
        assert_eq!(late, "already delivered");
        let row = deliveries::Entity::find_by_id(id).one(app.db()).await.unwrap().unwrap();
        assert_eq!((row.status.as_str(), row.attempts), ("delivered", 1));
        assert!(receiver.hits_on("/ok")[0].signed);
    }
}

both_backends! {
    async fn a_delivery_whose_job_was_lost_is_resubmitted_by_the_sweep(backend: Backend) {
        let receiver = Receiver::start(SECRET).await;
        let app = app_with(backend, |_| {}).await;
        let admin = app.admin_token().await;
        let hook = webhook(&app, &admin, &receiver.url("/ok"), json!(["agent.status"])).await;
        let lost = pending_row(&app, hook, Duration::from_secs(120)).await;
        let fresh = pending_row(&app, hook, Duration::ZERO).await;
        let ctx = app.state.job_context();
        let resubmitted = jobs::deliveries::redeliver(&ctx).await.unwrap();
        // Only the old one is the sweep's; the fresh one still has its own job coming (here,
        // none: it was written directly) and is not first in its line anyway. The app's own
        // pass (15 s after start) may have resubmitted the old one first on a slow machine, so
        // the count is at most one, and the rows and the receiver tell the rest.
        assert!(resubmitted <= 1, "{resubmitted}");
        let rows = finished(&app, &admin, hook, 2).await;
        assert!(rows.iter().all(|r| r["status"] == "delivered"), "{rows:?}");
        assert_eq!(rows.iter().map(|r| r["id"].as_i64().unwrap()).collect::<Vec<_>>(), [lost, fresh]);
        let keys = |id: i64| rows.iter().find(|r| r["id"] == id).unwrap()["deliveryId"].as_str().unwrap().to_owned();
        let hits: Vec<String> = receiver.hits_on("/ok").iter().map(|h| h.delivery_header.clone()).collect();
        assert_eq!(hits, [keys(lost), keys(fresh)], "each once, in order");
        assert_eq!(jobs::deliveries::redeliver(&ctx).await.unwrap(), 0, "nothing is left to resubmit");
    }
}

both_backends! {
    async fn private_targets_are_refused_at_delivery_time_too(backend: Backend) {
        let receiver = Receiver::start(SECRET).await;
        let app = app_with(backend, |s| {
            s.webhook_allow_private = false;
            s.notify.webhook_attempts = 1;
        })
        .await;
        let admin = app.admin_token().await;
        // Rows as a rebinding DNS name would leave them: saved while public, private now.
        let port = receiver.base.rsplit(':').next().unwrap().to_owned();
        let mut ids = Vec::new();
        for url in [format!("http://localhost:{port}/ok"), format!("http://127.0.0.1:{port}/ok")] {
            let now = Utc::now();
            let hook = webhooks::ActiveModel {
                account_id: Set(1),
                url: Set(url),
                secret: Set(SECRET.into()),
                events: Set(json!(["agent.status"])),
                active: Set(true),
                created_at: Set(now),
                updated_at: Set(now),
                ..Default::default()
            }
            .insert(app.db())
            .await
            .unwrap();
            ids.push((hook.id, pending_row(&app, hook.id, Duration::ZERO).await));
        }
        let ctx = app.state.job_context();
        for (hook, id) in ids {
            DeliverWebhook { delivery_id: id }.run(&ctx).await.unwrap();
            let rows = finished(&app, &admin, hook, 1).await;
            assert_eq!(rows[0]["status"], "dead");
            let error = rows[0]["lastError"].as_str().unwrap();
            assert!(error.contains("public"), "{error}");
        }
        assert!(receiver.hits().is_empty());
    }
}

use mail_parser::MimeHeaders;

fn parse(raw: &[u8]) -> mail_parser::Message<'_> {
    mail_parser::MessageParser::default()
        .parse(raw)
        .expect("a parsable mail")
}

fn sender(mail: &mail_parser::Message<'_>) -> (String, String) {
    let from = mail.from().and_then(|a| a.first()).expect("a From address");
    (
        from.name().unwrap_or_default().to_owned(),
        from.address().unwrap_or_default().to_owned(),
    )
}

fn recipient(mail: &mail_parser::Message<'_>) -> String {
    mail.to()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .unwrap_or_default()
        .to_owned()
}

both_backends! {
    async fn e_mails_go_to_a_disconnected_agent_the_visitor_and_supervisors(backend: Backend) {
        let smtp = SmtpSink::start().await;
        let receiver = Receiver::start(SECRET).await;
        let url = smtp.url.clone();
        let app = app_with(backend, move |s| {
            s.smtp_url = Some(url);
            s.notify.email_from = "support@acme.test".into();
        })
        .await;
        // Readiness checks the SMTP server once e-mail is configured.
        let ready = app.readiness().await;
        assert_eq!(ready.status, reqwest::StatusCode::OK, "{:?}", ready.body);
        assert_eq!(ready.body["checks"]["smtp"]["status"], "ok");
        let admin = app.admin_token().await;
        let hook = webhook(&app, &admin, &receiver.url("/ok"), json!(["sla.breached"])).await;
        let group = app.default_group(&admin).await;
        // Online through the REST API only: no socket, so not connected.
        let (agent_id, agent) = app.online_agent(&admin, group, 2).await;
        let agent_email = app.me(&agent).await["email"].as_str().unwrap().to_owned();
        let (id, visitor) = app
            .visitor(json!({ "name": "Vera <b>", "email": "vera@example.com", "initialMessage": "Hi, my order?" }))
            .await;
        let view = app.conversation_becomes(&admin, id, "active").await;
        assert_eq!(view["assignedAgentId"], agent_id);
        let thread = view["activeThreadId"].as_i64().unwrap();
        app.agent_says(&agent, thread, "It ships today & arrives <soon>.").await;
        app.visitor_says(&visitor, "Great, thanks").await;
        app.close_conversation(&agent, id).await;
        // The scheduler raises this; the channels must carry it.
        crate::notify::raise(&app, Outcome::SlaBreached {
            account_id: 1,
            conversation_id: id,
            group_id: group,
            visitor_id: view["visitorId"].as_i64().unwrap(),
            agent_id: Some(agent_id),
            sla: jobs::notify::SlaKind::FirstResponse,
            limit: 60,
            actual: 75,
        })
        .await;

        let mails = eventually(Duration::from_secs(20), "three mails", || async {
            let mails = smtp.mails();
            (mails.len() >= 3).then_some(mails)
        })
        .await;
        assert_eq!(mails.len(), 3, "one each: the agent, the visitor, the one admin");
        let parsed: Vec<_> = mails.iter().map(|m| parse(m)).collect();
        for mail in &parsed {
            assert_eq!(sender(mail), ("Acme".to_owned(), "support@acme.test".to_owned()));
            assert!(mail.message_id().is_some_and(|id| id.ends_with("@switchboard")));
            assert!(mail.date().is_some());
            assert!(mail.body_text(0).is_some() && mail.body_html(0).is_some(), "plain and HTML bodies");
            assert_eq!(mail.content_type().map(|c| c.subtype()), Some(Some("alternative")));
        }
        let to = |addr: &str| parsed.iter().find(|m| recipient(m) == addr).unwrap_or_else(|| panic!("a mail to {addr}"));

        let assigned = to(&agent_email);
        assert_eq!(assigned.subject(), Some(format!("New conversation #{id} assigned to you").as_str()));
        assert!(assigned.body_text(0).unwrap().contains("Vera <b>"));
        assert!(assigned.body_html(0).unwrap().contains("Vera &lt;b&gt;"));

        let transcript = to("vera@example.com");
        assert_eq!(transcript.subject(), Some("Your conversation with Acme"));
        let text = transcript.body_text(0).unwrap();
        let positions: Vec<usize> = ["Hi, my order?", "It ships today & arrives <soon>.", "Great, thanks"]
            .iter()
            .map(|m| text.find(m).unwrap_or_else(|| panic!("{m} in {text}")))
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "in order: {text}");
        let html = transcript.body_html(0).unwrap();
        assert!(html.contains("It ships today &amp; arrives &lt;soon&gt;."), "{html}");

        let sla = to(crate::helpers::ADMIN_EMAIL);
        assert_eq!(sla.subject(), Some("SLA digest: 1 conversation(s) broke their service level"));
        assert!(sla.body_text(0).unwrap().contains(&format!("#{id}: no agent answered within 60 s (waited 75 s)")));
        // And the webhook heard the breach.
        let rows = finished(&app, &admin, hook, 1).await;
        assert_eq!(rows[0]["kind"], "sla.breached");
        assert_eq!(receiver.hits_on("/ok")[0].body["data"]["sla"], "first_response");
    }
}

both_backends! {
    async fn smtp_down_retries_within_its_budget_and_resends_nothing_else(backend: Backend) {
        let receiver = Receiver::start(SECRET).await;
        let url = format!("smtp://127.0.0.1:{}", free_port());
        let app = app_with(backend, move |s| s.smtp_url = Some(url)).await;
        let ready = app.readiness().await;
        assert_eq!(ready.status, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{:?}", ready.body);
        assert_eq!(ready.body["checks"]["smtp"]["status"], "down");
        assert_eq!(ready.body["checks"]["database"]["status"], "ok");
        let admin = app.admin_token().await;
        let hook = webhook(&app, &admin, &receiver.url("/ok"), json!(["conversation.closed"])).await;
        let group = app.default_group(&admin).await;
        let (_, agent) = app.online_agent(&admin, group, 2).await;
        let (id, _) = app.visitor(json!({ "email": "vera@example.com" })).await;
        let view = app.conversation_becomes(&admin, id, "active").await;
        // An agent writes, so the visitor is owed a transcript.
        let thread = view["activeThreadId"].as_i64().unwrap();
        app.agent_says(&agent, thread, "On it.").await;
        app.close_conversation(&agent, id).await;

        let mails = eventually(Duration::from_secs(20), "the e-mails to die", || async {
            let rows = deliveries::Entity::find().all(app.db()).await.unwrap();
            let mails: Vec<_> = rows.into_iter().filter(|r| r.channel == "email").collect();
            (mails.len() == 2 && mails.iter().all(|r| r.status == "dead")).then_some(mails)
        })
        .await;
        for mail in &mails {
            assert_eq!(mail.attempts, 2, "{mail:?}");
            assert!(mail.last_error.as_deref().unwrap().starts_with("SMTP:"), "{mail:?}");
        }
        let hooks = finished(&app, &admin, hook, 1).await;
        assert_eq!(hooks.len(), 1);
        assert_eq!(hooks[0]["status"], "delivered");
        tokio::time::sleep(Duration::from_millis(800)).await;
        // The failing e-mail channel never re-sent the webhook.
        assert_eq!(receiver.hits_on("/ok").len(), 1);
    }
}

both_backends! {
    async fn an_account_without_webhooks_records_no_deliveries(backend: Backend) {
        let app = app_with(backend, |_| {}).await;
        let admin = app.admin_token().await;
        let (_, visitor) = app.visitor(json!({})).await;
        for n in 0..20 {
            app.visitor_says(&visitor, &format!("message {n}")).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(deliveries::Entity::find().all(app.db()).await.unwrap().is_empty());
        // A webhook created now is heard at once (the cache was dropped on create).
        let receiver = Receiver::start(SECRET).await;
        let hook = webhook(&app, &admin, &receiver.url("/ok"), json!(["message.created"])).await;
        app.visitor_says(&visitor, "now heard").await;
        let rows = finished(&app, &admin, hook, 1).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(receiver.hits_on("/ok")[0].body["data"]["event"]["content"], "now heard");
    }
}
