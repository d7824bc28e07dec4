//! A node's periodic passes over its sockets: vouching for their agents and visitors, pushing
//! live stats to supervisors, and telling every socket to resync after pushes may have been lost.

use std::time::Duration;

use serde_json::json;

use super::{AGENTS, Push, VISITORS, agents, push::with_io, room, visitors};

/// An interval for a node's periodic pass; a late tick delays the next ones (no burst).
fn ticker(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Waits for the next tick; `false` once `shutdown` is cancelled.
async fn next_tick(
    tick: &mut tokio::time::Interval,
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        _ = tick.tick() => true,
    }
}

/// Vouches every `period` for the agents with a socket on this node (`agents.last_seen_at`), so
/// that a presence job does not take offline an agent still connected elsewhere, and the
/// reconciler can tell a node that died with its sockets (its agents fall silent); and for the
/// visitors with a socket here (`visitors.last_seen_at`), so a waiting chat whose visitor is still
/// on the page is not closed as abandoned. Sockets whose
/// token expired are disconnected on the way. Runs until `shutdown`.
pub async fn heartbeat(
    push: Push,
    db: sea_orm::DatabaseConnection,
    period: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use crate::auth::visitor::SEEN_EVERY;
    use chrono::SubsecRound;
    use entity::agents as rows;
    use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QuerySelect, sea_query::Expr};

    let mut tick = ticker(period);
    while next_tick(&mut tick, &shutdown).await {
        // Taken before the sockets are listed: a socket that leaves after the listing has its
        // drop recorded later than this.
        let at = chrono::Utc::now().trunc_subsecs(6);
        let ids = with_io!(&push, io => agents::vouch(io), _ => Vec::new());
        let visitor_ids = with_io!(&push, io => visitors::vouch(io), _ => Vec::new());
        for chunk in visitor_ids.chunks(500) {
            // Only what the timer reads: visitors whose chat waits, and not seen for a while
            // (one row write per waiting visitor every `SEEN_EVERY`, not one per heartbeat).
            let stale = at - chrono::Duration::from_std(SEEN_EVERY).unwrap_or_default();
            let waiting = sea_orm::sea_query::Query::select()
                .column(entity::conversations::Column::VisitorId)
                .from(entity::conversations::Entity)
                .and_where(entity::conversations::Column::VisitorId.is_in(chunk.iter().copied()))
                .and_where(
                    entity::conversations::Column::Status
                        .eq(entity::enums::ConversationStatus::Pending),
                )
                .to_owned();
            let vouched = entity::visitors::Entity::update_many()
                .col_expr(entity::visitors::Column::LastSeenAt, Expr::value(at))
                .filter(entity::visitors::Column::Id.is_in(chunk.iter().copied()))
                .filter(entity::visitors::Column::LastSeenAt.lt(stale))
                .filter(entity::visitors::Column::Id.in_subquery(waiting))
                .exec(&db)
                .await;
            if let Err(err) = vouched {
                tracing::warn!(%err, "visitor presence heartbeat failed");
            }
        }
        for chunk in ids.chunks(500) {
            let vouched = rows::Entity::update_many()
                .col_expr(rows::Column::LastSeenAt, Expr::value(at))
                .filter(rows::Column::Id.is_in(chunk.iter().copied()))
                .filter(
                    Condition::any()
                        .add(rows::Column::LastSeenAt.is_null())
                        .add(rows::Column::LastSeenAt.lt(at)),
                )
                .exec(&db)
                .await;
            if let Err(err) = vouched {
                tracing::warn!(%err, "presence heartbeat failed");
            }
            // The agents' token versions as they are now: sockets of revoked tokens go.
            let live: Result<Vec<(i64, i32)>, _> = rows::Entity::find()
                .select_only()
                .column(rows::Column::Id)
                .column(rows::Column::TokenVersion)
                .filter(rows::Column::Id.is_in(chunk.iter().copied()))
                .filter(rows::Column::DeletedAt.is_null())
                .into_tuple()
                .all(&db)
                .await;
            match live {
                Ok(live) => {
                    let live = live.into_iter().collect();
                    with_io!(&push, io => agents::drop_revoked(io, chunk, &live), _ => ());
                }
                Err(err) => tracing::warn!(%err, "could not check the agents' tokens"),
            }
        }
    }
}

/// Pushes `stats:update` (the numbers of `GET /v1/stats`) every `period` to the account rooms
/// that supervisors on this node are in. Runs until `shutdown`.
pub async fn push_stats(
    push: Push,
    db: sea_orm::DatabaseConnection,
    period: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = ticker(period);
    while next_tick(&mut tick, &shutdown).await {
        for account_id in push.local_rooms_of(AGENTS, "account") {
            match crate::chat::stats::account_stats(&db, account_id).await {
                Ok(stats) => {
                    push.emit_local(AGENTS, room::account(account_id), "stats:update", &stats)
                        .await;
                }
                Err(err) => tracing::warn!(account_id, %err, "stats not computed"),
            }
        }
    }
}

/// What sockets hear when pushes may have been lost: they re-read their state with `sync`.
pub const SYNC_REQUIRED: &str = "sync:required";
/// Over how long clients told `sync:required` should spread their `sync` requests.
const SYNC_SPREAD_MS: u64 = 1_000;

/// Tells every socket of this node `sync:required` when some process announces that pushes may
/// have been lost (its Redis link came back, see `redis_link`). Announcements that arrive together
/// (every process recovers from the same outage) make one.
pub(super) async fn tell_to_resync(
    push: Push,
    mut announcements: tokio::sync::mpsc::Receiver<socketioxide_redis::drivers::ChanItem>,
) {
    while announcements.recv().await.is_some() {
        // After an outage every process announces its own recovery within a second or so.
        tokio::time::sleep(Duration::from_secs(1)).await;
        while announcements.try_recv().is_ok() {}
        // Every client asks at once otherwise: they spread their `sync` over `withinMs`.
        let told = json!({ "reason": "pushes_may_have_been_lost", "withinMs": SYNC_SPREAD_MS });
        for ns in [AGENTS, VISITORS] {
            push.emit_local_all(ns, SYNC_REQUIRED, &told).await;
        }
        tracing::info!(
            agents = push.local_sockets(AGENTS),
            visitors = push.local_sockets(VISITORS),
            "told this node's sockets to resync"
        );
    }
}
