//! `GET /v1/stats` and `stats:update` after a known sequence of events, and who may see them.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{both_backends, helpers::*};

fn group_of(stats: &Value, group: i64) -> Value {
    stats["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["groupId"] == group)
        .cloned()
        .unwrap_or_else(|| panic!("group {group} in {stats}"))
}

both_backends! {
    async fn stats_follow_a_known_sequence_and_reach_supervisors_live(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let group = app.default_group(&admin).await;
        let (agent_id, agent) = app.online_agent(&admin, group, 1).await;
        let _offline = app.agent_in_group(&admin, group, 3).await;

        // One visitor is served; three wait, one per priority.
        let (served, _) = app.visitor(json!({ "initialMessage": "first" })).await;
        app.conversation_becomes(&admin, served, "active").await;
        let mut waiting = Vec::new();
        for priority in ["high", "normal", "low"] {
            waiting.push(app.visitor(json!({ "priority": priority })).await.0);
        }
        let thread = app.conversation(&admin, served).await["activeThreadId"].as_i64().unwrap();
        app.agent_says(&agent, thread, "hello").await;

        let stats = eventually(Duration::from_secs(10), "the first response in the stats", || async {
            let stats = app.stats(&admin).await;
            let g = group_of(&stats, group);
            g["medianFirstResponseSeconds"].is_number().then_some(g)
        })
        .await;
        assert_eq!(stats["waiting"], json!({ "high": 1, "normal": 1, "low": 1, "total": 3 }), "{stats}");
        assert!(stats["oldestWaitSeconds"].as_i64().unwrap() >= 0, "{stats}");
        // The first admin is a member of the default group too (offline).
        assert_eq!(stats["agents"], json!({ "members": 3, "online": 1, "accepting": 1 }), "{stats}");
        assert_eq!(stats["occupancy"], json!({ "active": 1, "capacity": 1, "ratio": 1.0 }), "{stats}");
        assert_eq!(stats["assigned"], json!({ "last5Minutes": 1, "last60Minutes": 1 }), "{stats}");
        assert_eq!(stats["closed"], json!({ "last5Minutes": 0, "last60Minutes": 0 }), "{stats}");
        assert!(stats["medianWaitSeconds"].as_f64().unwrap() >= 0.0, "{stats}");

        // Supervisors hear the same numbers every few seconds.
        let mut supervisor = app.agent_socket(&admin).await;
        let pushed = supervisor.next_where("stats:update", |s| s["groups"].is_array()).await;
        assert_eq!(group_of(&pushed, group)["waiting"]["total"], 3);

        // The agent resolves its chat: the high-priority visitor is next.
        app.close_conversation(&agent, served).await;
        let next = app.conversation_becomes(&admin, waiting[0], "active").await;
        assert_eq!(next["assignedAgentId"], agent_id);
        let pushed = supervisor
            .next_where("stats:update", |s| group_of(s, group)["closed"]["last5Minutes"] == 1 && group_of(s, group)["assigned"]["last5Minutes"] == 2)
            .await;
        let g = group_of(&pushed, group);
        assert_eq!(g["waiting"], json!({ "high": 0, "normal": 1, "low": 1, "total": 2 }), "{g}");
        assert_eq!(g["occupancy"]["active"], 1, "{g}");
        supervisor.disconnect().await;
    }
}

both_backends! {
    async fn stats_are_for_supervisors_of_the_account_only(backend: Backend) {
        let app = spawn_app(backend).await;
        let admin = app.admin_token().await;
        let group = app.default_group(&admin).await;
        app.visitor(json!({})).await;

        let (_, agent) = app.agent_with_role(&admin, "agent").await;
        assert_eq!(app.try_stats(&agent).await.status, StatusCode::FORBIDDEN);
        assert_eq!(app.request(Method::GET, "/v1/stats", None, None).await.status, StatusCode::UNAUTHORIZED);
        let (_, supervisor) = app.agent_with_role(&admin, "supervisor").await;
        let seen = app.stats(&supervisor).await;
        assert_eq!(group_of(&seen, group)["waiting"]["total"], 1);

        // Another account sees its own groups, none of this one's.
        let other = app.second_account_admin().await;
        let theirs = app.stats(&other).await;
        let groups = theirs["groups"].as_array().unwrap();
        assert!(groups.iter().all(|g| g["groupId"] != group && g["waiting"]["total"] == 0), "{theirs}");

        // An agent's socket hears no stats.
        let mut plain = app.agent_socket(&agent).await;
        plain.none("stats:update", Duration::from_millis(2_500)).await;
        plain.disconnect().await;
    }
}
