//! The `deliveries` rows over their life: what the redeliver pass finds behind a stuck line,
//! rows whose attempt budget is spent or whose mail cannot be written, who may be mailed a
//! transcript, and pruning after the retention.

use std::time::Duration;

use chrono::Utc;
use entity::deliveries;
use jobs::{Job, email::SendEmail, notify::Outcome, webhook::DeliverWebhook};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait, QueryOrder};
use serde_json::json;

use crate::{
    both_backends,
    helpers::{Backend, TestApp, eventually},
    notify::{SECRET, app_with, finished, pending, webhook},
    receivers::{Receiver, SmtpSink},
};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

async fn row(app: &TestApp, id: i64) -> deliveries::Model {
    deliveries::Entity::find_by_id(id)
        .one(app.db())
        .await
        .unwrap()
        .unwrap()
}

async fn all_rows(app: &TestApp) -> Vec<deliveries::Model> {
    deliveries::Entity::find()
        .order_by_asc(deliveries::Column::Id)
        .all(app.db())
        .await
        .unwrap()
}

fn ago(wait: Duration) -> chrono::DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(wait).unwrap()
}

both_backends! {
    async fn a_line_held_by_a_failing_endpoint_does_not_hide_lost_deliveries_after_it(backend: Backend) {
        let receiver = Receiver::start(SECRET).await;
        let app = app_with(backend, |_| {}).await;
        let admin = app.admin_token().await;
        let hook = webhook(&app, &admin, &receiver.url("/ok"), json!(["agent.status"])).await;
        // The head of agent 1's line failed once and waits an hour for its next attempt ...
        let mut head = pending(hook, "agent:1", 2 * HOUR);
        head.attempts = Set(1);
        head.next_attempt_at = Set(Some(Utc::now() + chrono::Duration::hours(1)));
        head.insert(app.db()).await.unwrap();
        // ... with more rows queued behind it than one pass reads, all old enough to look lost.
        let behind: Vec<_> = (0..500).map(|_| pending(hook, "agent:1", HOUR)).collect();
        deliveries::Entity::insert_many(behind).exec(app.db()).await.unwrap();
        // A row of another line whose job was lost, after all of them.
        let lost = pending(hook, "agent:2", HOUR).insert(app.db()).await.unwrap();

        jobs::deliveries::redeliver(&app.state.job_context()).await.unwrap();
        eventually(Duration::from_secs(20), "the lost row to be delivered", || async {
            (row(&app, lost.id).await.status == "delivered").then_some(())
        })
        .await;
        // Only it went: the line behind the head still waits for the head.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let hits = receiver.hits_on("/ok");
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].delivery_header, lost.delivery_key);
        let waiting = all_rows(&app).await.into_iter().filter(|r| r.status == "pending").count();
        assert_eq!(waiting, 501);
    }
}

both_backends! {
    async fn a_delivery_whose_budget_is_spent_is_not_tried_again(backend: Backend) {
        let receiver = Receiver::start(SECRET).await;
        let app = app_with(backend, |_| {}).await;
        let admin = app.admin_token().await;
        let hook = webhook(&app, &admin, &receiver.url("/ok"), json!(["agent.status"])).await;
        // Its last attempt was claimed, then the worker died before recording the outcome.
        let mut spent = pending(hook, "agent:1", HOUR);
        spent.attempts = Set(3);
        spent.max_attempts = Set(3);
        let spent = spent.insert(app.db()).await.unwrap();
        let next = pending(hook, "agent:1", Duration::ZERO).insert(app.db()).await.unwrap();

        let job = DeliverWebhook { delivery_id: spent.id };
        let summary = job.clone().run(&app.state.job_context()).await.unwrap();
        assert_eq!(summary, "budget spent: dead");
        let dead = row(&app, spent.id).await;
        assert_eq!((dead.status.as_str(), dead.attempts), ("dead", 3));
        assert!(dead.last_error.as_deref().unwrap().contains("budget"), "{dead:?}");
        // The line moves on: the next row goes, and only it.
        eventually(Duration::from_secs(20), "the next row to be delivered", || async {
            (row(&app, next.id).await.status == "delivered").then_some(())
        })
        .await;
        let hits = receiver.hits_on("/ok");
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].delivery_header, next.delivery_key);
        // Run again (a redelivered copy): still nothing.
        assert_eq!(job.run(&app.state.job_context()).await.unwrap(), "already dead");
    }
}

/// A pending e-mail row about `conversation_id`, written directly (no job submitted).
fn email_row(kind: &str, recipient: &str, conversation_id: i64) -> deliveries::ActiveModel {
    let now = Utc::now();
    deliveries::ActiveModel {
        account_id: Set(1),
        channel: Set("email".into()),
        webhook_id: Set(None),
        delivery_key: Set(ulid::Ulid::new().to_string()),
        kind: Set(kind.into()),
        order_key: Set(format!("conversation:{conversation_id}")),
        recipient: Set(Some(recipient.into())),
        payload: Set(json!({ "conversationId": conversation_id })),
        status: Set("pending".into()),
        attempts: Set(0),
        max_attempts: Set(5),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
}

both_backends! {
    async fn an_e_mail_that_cannot_be_written_is_dead_at_once(backend: Backend) {
        let smtp = SmtpSink::start().await;
        let url = smtp.url.clone();
        let app = app_with(backend, move |s| s.smtp_url = Some(url)).await;
        let (conversation, _) = app.visitor(json!({})).await;
        let ctx = app.state.job_context();
        for (kind, recipient, says) in [
            ("email.transcript", "not an address", "recipient address"),
            ("email.unheard_of", "vera@example.com", "unknown e-mail kind"),
        ] {
            let id = email_row(kind, recipient, conversation).insert(app.db()).await.unwrap().id;
            let job = SendEmail { delivery_id: id };
            let summary = job.clone().run(&ctx).await.unwrap();
            assert!(summary.ends_with(": dead"), "{summary}");
            let dead = row(&app, id).await;
            assert_eq!((dead.status.as_str(), dead.attempts), ("dead", 1), "{dead:?}");
            assert!(dead.last_error.as_deref().unwrap().contains(says), "{dead:?}");
            assert!(dead.claimed_until.is_none());
            // Neither a redelivered copy nor the redeliver pass picks it up again.
            assert_eq!(job.run(&ctx).await.unwrap(), "already dead");
        }
        jobs::deliveries::redeliver(&ctx).await.unwrap();
        assert!(all_rows(&app).await.iter().all(|r| r.status == "dead"));
        assert!(smtp.mails().is_empty());
    }
}

both_backends! {
    async fn a_visitor_alone_cannot_have_their_text_mailed_to_any_address(backend: Backend) {
        let smtp = SmtpSink::start().await;
        let receiver = Receiver::start(SECRET).await;
        let url = smtp.url.clone();
        let app = app_with(backend, move |s| s.smtp_url = Some(url)).await;
        let admin = app.admin_token().await;
        let hook = webhook(&app, &admin, &receiver.url("/ok"), json!(["conversation.closed", "sla.breached"])).await;
        // No agent ever writes: the session names someone else's address and carries the text.
        let (id, token) = app
            .visitor(json!({ "email": "victim@example.com", "initialMessage": "Cheap pills at spam.example" }))
            .await;
        app.end_conversation(&token).await;
        let view = app.conversation_becomes(&admin, id, "closed").await;
        // An outcome of the same conversation after the close: the fan-out handles one
        // conversation's outcomes in order, so once this one's webhook row exists, the close's
        // e-mails have been decided.
        crate::notify::raise(&app, Outcome::SlaBreached {
            account_id: 1,
            conversation_id: id,
            group_id: view["groupId"].as_i64().unwrap(),
            visitor_id: view["visitorId"].as_i64().unwrap(),
            agent_id: None,
            sla: jobs::notify::SlaKind::FirstResponse,
            limit: 60,
            actual: 75,
        })
        .await;
        let hooks = finished(&app, &admin, hook, 2).await;
        assert!(hooks.iter().any(|d| d["kind"] == "sla.breached"), "{hooks:?}");
        assert!(hooks.iter().any(|d| d["kind"] == "conversation.closed"), "{hooks:?}");
        let mails: Vec<_> = all_rows(&app).await.into_iter().filter(|r| r.channel == "email").collect();
        assert!(mails.iter().all(|r| r.kind != "email.transcript"), "{mails:?}");
        assert!(mails.iter().all(|r| r.recipient.as_deref() != Some("victim@example.com")), "{mails:?}");
        // The SLA mail (to the admin) is sent; nothing reaches the victim.
        eventually(Duration::from_secs(20), "the SLA mail", || async { (!smtp.mails().is_empty()).then_some(()) }).await;
        for mail in smtp.mails() {
            assert!(!String::from_utf8_lossy(&mail).contains("victim@example.com"));
        }
    }
}

/// A finished (or pending) e-mail row last changed `changed_ago`.
fn finished_row(status: &str, changed_ago: Duration) -> deliveries::ActiveModel {
    let mut row = email_row("email.assigned", "agent@example.com", 1);
    let at = ago(changed_ago);
    row.status = Set(status.into());
    row.attempts = Set(1);
    row.created_at = Set(at);
    row.updated_at = Set(at);
    if status == "delivered" {
        row.delivered_at = Set(Some(at));
    }
    if status == "pending" {
        // Waiting for a retry an hour from now: no pass resubmits it meanwhile.
        row.next_attempt_at = Set(Some(Utc::now() + chrono::Duration::hours(1)));
    }
    row
}

both_backends! {
    async fn finished_deliveries_are_pruned_after_the_retention(backend: Backend) {
        let app = app_with(backend, |s| s.notify.delivery_retention_days = 2).await;
        // More old rows than one delete statement takes.
        let old: Vec<_> = (0..600).map(|_| finished_row("delivered", 3 * DAY)).collect();
        deliveries::Entity::insert_many(old).exec(app.db()).await.unwrap();
        finished_row("dead", 3 * DAY).insert(app.db()).await.unwrap();
        let mut kept = Vec::new();
        for (status, changed_ago) in [("pending", 3 * DAY), ("delivered", DAY), ("dead", HOUR)] {
            kept.push(finished_row(status, changed_ago).insert(app.db()).await.unwrap().id);
        }

        let ctx = app.state.job_context();
        let pruned = jobs::deliveries::prune(&ctx).await.unwrap();
        // The app's own pass may have pruned some of them first; none are left either way.
        assert!(pruned <= 601, "{pruned}");
        let left: Vec<i64> = all_rows(&app).await.iter().map(|r| r.id).collect();
        assert_eq!(left, kept);
        assert_eq!(row(&app, kept[0]).await.status, "pending");
        // Twice is once.
        assert_eq!(jobs::deliveries::prune(&ctx).await.unwrap(), 0);
        assert_eq!(all_rows(&app).await.len(), 3);
    }
}

both_backends! {
    async fn a_transcript_goes_only_to_an_address_given_before_an_agent_joined_and_it_freezes_at_the_close(backend: Backend) {
        let smtp = SmtpSink::start().await;
        let receiver = Receiver::start(SECRET).await;
        let url = smtp.url.clone();
        let app = app_with(backend, move |s| s.smtp_url = Some(url)).await;
        let admin = app.admin_token().await;
        let hook = webhook(&app, &admin, &receiver.url("/ok"), json!(["conversation.closed"])).await;
        let group = app.default_group(&admin).await;
        let (_, agent) = app.online_agent(&admin, group, 4).await;
        // One visitor gives its address at the start, the other once the agent has joined.
        let (early, _) = app.visitor(json!({ "email": "early@example.com", "initialMessage": "hi" })).await;
        let (late, late_token) = app.visitor(json!({ "initialMessage": "hi" })).await;
        for id in [early, late] {
            let view = app.conversation_becomes(&admin, id, "active").await;
            let thread = view["activeThreadId"].as_i64().unwrap();
            app.agent_says(&agent, thread, "Here is our answer.").await;
        }
        app.leave_contact(&late_token, json!({ "email": "third.party@example.com" })).await;
        for id in [early, late] {
            app.close_conversation(&agent, id).await;
            app.conversation_becomes(&admin, id, "resolved").await;
        }
        // A close's webhook and e-mail rows are recorded together: once both webhooks are
        // there, every transcript that will be sent is recorded.
        finished(&app, &admin, hook, 2).await;
        let transcripts: Vec<_> = all_rows(&app)
            .await
            .into_iter()
            .filter(|r| r.kind == "email.transcript")
            .map(|r| r.recipient.unwrap_or_default())
            .collect();
        assert_eq!(transcripts, ["early@example.com"]);

        // Once the chat is over, the address stays what it was.
        let changed = app
            .try_leave_contact(&late_token, json!({ "email": "someone.else@example.com" }))
            .await;
        assert_eq!(changed.status, reqwest::StatusCode::CONFLICT, "{:?}", changed.body);
        let visitor = app.conversation(&admin, late).await["visitorId"].as_i64().unwrap();
        let stored = entity::visitors::Entity::find_by_id(visitor).one(app.db()).await.unwrap().unwrap();
        assert_eq!(stored.email.as_deref(), Some("third.party@example.com"));
        eventually(Duration::from_secs(20), "the transcript", || async { (!smtp.mails().is_empty()).then_some(()) }).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mails = smtp.mails();
        assert!(mails.iter().all(|m| !String::from_utf8_lossy(m).contains("third.party@example.com")));
    }
}

both_backends! {
    async fn sla_breaches_are_mailed_as_one_digest_per_supervisor_and_window(backend: Backend) {
        use sea_orm::{ColumnTrait, QueryFilter};
        let smtp = SmtpSink::start().await;
        let url = smtp.url.clone();
        // Digest windows of 2 s (see `notify::quick`).
        let app = app_with(backend, move |s| s.smtp_url = Some(url)).await;
        let admin = app.admin_token().await;
        let (_, supervisor) = app.agent_with_role(&admin, "supervisor").await;
        let supervisor = app.me(&supervisor).await["email"].as_str().unwrap().to_owned();
        let group = app.default_group(&admin).await;
        app.update_group(&admin, group, json!({ "firstResponseSlaSeconds": 2 })).await;
        // A dozen chats nobody answers: a dozen breaches.
        for _ in 0..12 {
            app.visitor(json!({ "initialMessage": "anyone?" })).await;
        }
        let stamps = eventually(Duration::from_secs(30), "twelve breaches", || async {
            let stamps: Vec<_> = entity::conversations::Entity::find()
                .filter(entity::conversations::Column::FirstResponseBreachedAt.is_not_null())
                .all(app.db())
                .await
                .unwrap()
                .into_iter()
                .filter_map(|c| c.first_response_breached_at)
                .collect();
            (stamps.len() == 12).then_some(stamps)
        })
        .await;
        let windows: std::collections::BTreeSet<i64> = stamps.iter().map(|at| at.timestamp().div_euclid(2)).collect();
        // Two recipients (the admin and the supervisor), one mail each per window touched.
        let expected = 2 * windows.len();
        eventually(Duration::from_secs(30), "the digests", || async { (smtp.mails().len() >= expected).then_some(()) }).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mails: Vec<String> = smtp.mails().iter().map(|m| String::from_utf8_lossy(m).into_owned()).collect();
        assert_eq!(mails.len(), expected, "not one mail per breach: {} windows", windows.len());
        let listed = |mail: &String| -> u64 {
            let subject = mail.lines().find(|l| l.starts_with("Subject: SLA digest: ")).expect("a digest");
            subject["Subject: SLA digest: ".len()..].split(' ').next().unwrap().parse().unwrap()
        };
        for recipient in [crate::helpers::ADMIN_EMAIL, supervisor.as_str()] {
            let theirs: u64 = mails.iter().filter(|m| m.contains(&format!("To: {recipient}"))).map(listed).sum();
            assert_eq!(theirs, 12, "every breach is in one of {recipient}'s digests");
        }
    }
}
