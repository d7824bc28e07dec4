//! Visitors: `POST /v1/widget/session` at a steady rate on API node B, every answer recorded.

use std::{sync::Arc, time::Duration};

use serde_json::json;
use tokio::sync::Semaphore;

use crate::services::Clock;

#[derive(Debug, Clone)]
pub struct Visit {
    pub sent: f64,
    pub answered: f64,
    /// `None`: no HTTP answer (`detail` says why).
    pub status: Option<u16>,
    pub conversation_id: Option<i64>,
    pub retry_after: Option<String>,
    pub detail: String,
}

/// Opens `rate` sessions per second for `duration`; returns every outcome, in sending order.
pub async fn run(
    http: reqwest::Client,
    api: String,
    group_id: i64,
    rate: u32,
    duration: Duration,
    clock: Clock,
) -> Vec<Visit> {
    let total = (f64::from(rate) * duration.as_secs_f64()).round() as usize;
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let limit = Arc::new(Semaphore::new(256));
    let url = format!("{api}/v1/widget/session");
    let mut tasks = Vec::with_capacity(total);
    for _ in 0..total {
        tick.tick().await;
        let permit = limit.clone().acquire_owned().await.expect("open");
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let sent = clock.now();
            let answer = http
                .post(&url)
                .json(&json!({ "groupId": group_id }))
                .send()
                .await;
            let visit = match answer {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let text = response.text().await.unwrap_or_default();
                    let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    Visit {
                        sent,
                        answered: clock.now(),
                        status: Some(status),
                        conversation_id: (status == 201)
                            .then(|| body["conversationId"].as_i64())
                            .flatten(),
                        retry_after,
                        detail: if status == 201 {
                            String::new()
                        } else {
                            text.chars().take(300).collect()
                        },
                    }
                }
                Err(err) => Visit {
                    sent,
                    answered: clock.now(),
                    status: None,
                    conversation_id: None,
                    retry_after: None,
                    detail: format!("{err:?}").chars().take(300).collect(),
                },
            };
            drop(permit);
            visit
        }));
    }
    let mut visits = Vec::with_capacity(total);
    for task in tasks {
        if let Ok(visit) = task.await {
            visits.push(visit);
        }
    }
    visits
}
