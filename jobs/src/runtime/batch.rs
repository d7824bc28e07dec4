//! Group commit for the hot paths: concurrent callers hand in one item each, and whatever has
//! gathered while the previous batch was busy is written together in one transaction, with a
//! handful of statements for the whole batch instead of a handful per item.
//!
//! It adds no wait of its own: an item that finds a lane free starts at once, alone. Batches form
//! only under load, which is when round trips to the database are what limits throughput (each
//! statement costs both sides a network round trip; PostgreSQL also a WAL flush per commit).
//!
//! If a batch fails as a whole, each of its items is run again on its own, so one bad item fails
//! alone and the others go through.

use std::{future::Future, pin::Pin, sync::Arc};

use sea_orm::DbErr;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// The future a batch function returns.
pub type BatchFuture<O> = Pin<Box<dyn Future<Output = Result<Vec<O>, DbErr>> + Send>>;

/// Most items one batch carries.
const MAX_BATCH: usize = 256;

struct Pending<I, O> {
    item: I,
    reply: oneshot::Sender<Result<O, DbErr>>,
}

/// Hands items to a batch function; cloning shares the batching task, which ends with the last
/// handle.
pub struct Batcher<I, O> {
    name: &'static str,
    inbox: mpsc::Sender<Pending<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            inbox: self.inbox.clone(),
        }
    }
}

impl<I, O> std::fmt::Debug for Batcher<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("name", &self.name).finish()
    }
}

/// How many batches of one kind run at once in a process. One on both backends: SQLite has one
/// writer, and on PostgreSQL a second close or claim batch would only queue on the same agent
/// rows (measured at 1,000/s over 20 s: 770/s with two lanes, 967/s with one).
const LANES: usize = 1;

impl<I, O> Batcher<I, O>
where
    I: Clone + Send + 'static,
    O: Send + 'static,
{
    /// Starts the batching task (inside a Tokio runtime). `run` gets the items of one batch and
    /// returns one output per item, in order. A batch that fails is run again item by item, so
    /// `run` must leave nothing that a second run would get wrong: its writes go in one
    /// transaction, or each is conditional (idempotent).
    pub fn start<F>(name: &'static str, lanes: usize, run: F) -> Self
    where
        F: Fn(Vec<I>) -> BatchFuture<O> + Send + Sync + 'static,
    {
        let (inbox, receiver) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(dispatch(name, lanes.max(1), Arc::new(run), receiver));
        Self { name, inbox }
    }

    /// Runs `item` in the next batch and returns its output.
    pub async fn run(&self, item: I) -> Result<O, DbErr> {
        let (reply, answer) = oneshot::channel();
        let stopped = || DbErr::Custom(format!("the {} batcher stopped", self.name));
        self.inbox
            .send(Pending { item, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn dispatch<I, O, F>(
    name: &'static str,
    lanes: usize,
    run: Arc<F>,
    mut inbox: mpsc::Receiver<Pending<I, O>>,
) where
    I: Clone + Send + 'static,
    O: Send + 'static,
    F: Fn(Vec<I>) -> BatchFuture<O> + Send + Sync + 'static,
{
    let free = Arc::new(Semaphore::new(lanes));
    while let Some(first) = inbox.recv().await {
        // Wait for a lane before gathering: while every lane is busy, items pile up into the
        // next batch.
        let Ok(lane) = free.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match inbox.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        let run = run.clone();
        tokio::spawn(async move {
            execute(name, &*run, batch).await;
            drop(lane);
        });
    }
}

async fn execute<I, O, F>(name: &'static str, run: &F, batch: Vec<Pending<I, O>>)
where
    I: Clone,
    F: Fn(Vec<I>) -> BatchFuture<O>,
{
    let items: Vec<I> = batch.iter().map(|p| p.item.clone()).collect();
    let size = items.len();
    let started = std::time::Instant::now();
    let result = run(items).await;
    metrics::histogram!("switchboard_batch_size", "batch" => name).record(size as f64);
    metrics::histogram!("switchboard_batch_seconds", "batch" => name)
        .record(started.elapsed().as_secs_f64());
    match result {
        Ok(outputs) if outputs.len() == size => {
            for (pending, output) in batch.into_iter().zip(outputs) {
                let _ = pending.reply.send(Ok(output));
            }
            return;
        }
        Ok(outputs) => {
            tracing::error!(
                batch = name,
                size,
                outputs = outputs.len(),
                "a batch gave the wrong number of outputs; running its items one by one"
            );
        }
        Err(err) if size > 1 => {
            tracing::warn!(batch = name, size, %err, "batch failed; running its items one by one");
        }
        Err(err) => {
            if let Some(pending) = batch.into_iter().next() {
                let _ = pending.reply.send(Err(err));
            }
            return;
        }
    }
    for pending in batch {
        let output = match run(vec![pending.item.clone()]).await {
            Ok(mut outputs) if outputs.len() == 1 => outputs
                .pop()
                .ok_or_else(|| DbErr::Custom(format!("the {name} batch gave no output"))),
            Ok(_) => Err(DbErr::Custom(format!(
                "the {name} batch gave the wrong number of outputs"
            ))),
            Err(err) => Err(err),
        };
        let _ = pending.reply.send(output);
    }
}

/// The batchers of the lifecycle's hot paths in this process (see the jobs that use them).
#[derive(Clone, Debug)]
pub struct Batches {
    /// Assignment requests (`assign_agent::request_assign`), coalesced per group.
    pub(crate) requests: Batcher<(i64, i64), Result<(), String>>,
    /// Enqueue jobs.
    pub(crate) enqueues: Batcher<
        crate::enqueue_conversation::EnqueueConversation,
        crate::enqueue_conversation::Placed,
    >,
    /// Close jobs.
    pub(crate) closes: Batcher<
        crate::conversation::Closing,
        Option<(crate::conversation::Closed, crate::outbox::Staged)>,
    >,
    /// Intents of acknowledged requests (closes, ends, transfers): one commit for those that
    /// arrive together.
    pub(crate) intents: Batcher<crate::intent::NewIntent, i64>,
    /// Widget sessions (the HTTP layer's one hot write).
    pub sessions: Batcher<
        crate::session::Opening,
        Result<crate::session::Opened, crate::session::OpenRefused>,
    >,
}

impl Batches {
    /// Starts the batching tasks for `db`, submitting follow-up jobs to `jobs` and staging
    /// outcomes in `outbox`.
    pub fn start(
        db: &sea_orm::DatabaseConnection,
        jobs: &crate::JobStore,
        outbox: &crate::outbox::Outbox,
    ) -> Self {
        let lanes = LANES;
        let requests = {
            let (db, jobs) = (db.clone(), jobs.clone());
            Batcher::start("assign request", lanes, move |items| {
                let (db, jobs) = (db.clone(), jobs.clone());
                Box::pin(async move { crate::assign_agent::request_many(&db, &jobs, items).await })
            })
        };
        let enqueues = {
            let (db, outbox) = (db.clone(), outbox.clone());
            Batcher::start("enqueue", lanes, move |items| {
                let (db, outbox) = (db.clone(), outbox.clone());
                Box::pin(async move {
                    crate::enqueue_conversation::place_many(&db, &outbox, items).await
                })
            })
        };
        let closes = {
            let (db, outbox) = (db.clone(), outbox.clone());
            Batcher::start(
                "close",
                lanes,
                move |items: Vec<crate::conversation::Closing>| {
                    let (db, outbox) = (db.clone(), outbox.clone());
                    Box::pin(async move {
                        let txn = crate::db::begin_write(&db).await?;
                        crate::close_conversation::commit_closes(&db, &outbox, txn, &items).await
                    })
                },
            )
        };
        let sessions = {
            let db = db.clone();
            let places = Arc::new(crate::session::Places::default());
            Batcher::start("session", lanes, move |items| {
                let (db, places) = (db.clone(), places.clone());
                Box::pin(async move { crate::session::open_many(&db, &places, items).await })
            })
        };
        let intents = {
            let db = db.clone();
            Batcher::start("intent", lanes, move |items| {
                let db = db.clone();
                Box::pin(async move { crate::intent::record_many(&db, items).await })
            })
        };
        Self {
            requests,
            enqueues,
            closes,
            sessions,
            intents,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Mutex, time::Duration};

    use super::*;

    #[tokio::test]
    async fn concurrent_items_share_batches_and_each_gets_its_own_output() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let doubler = Batcher::start("test", 1, move |items: Vec<u32>| {
            seen.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(items.len());
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(items.into_iter().map(|n| n * 2).collect())
            })
        });
        let calls: Vec<_> = (0..50u32)
            .map(|n| {
                let doubler = doubler.clone();
                tokio::spawn(async move { (n, doubler.run(n).await) })
            })
            .collect();
        for call in calls {
            let (n, doubled) = call.await.expect("the call ran");
            assert_eq!(doubled.expect("no error"), n * 2);
        }
        let sizes = sizes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(sizes.iter().sum::<usize>(), 50, "every item ran once");
        assert!(sizes.len() < 50, "items were batched: {sizes:?}");
    }

    #[tokio::test]
    async fn a_bad_item_fails_alone() {
        let checker = Batcher::start("test", 2, |items: Vec<i32>| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if items.iter().any(|n| *n < 0) {
                    return Err(DbErr::Custom("negative".into()));
                }
                Ok(items)
            })
        });
        let calls: Vec<_> = [1, -1, 2, 3, -4, 5]
            .into_iter()
            .map(|n| {
                let checker = checker.clone();
                tokio::spawn(async move { (n, checker.run(n).await) })
            })
            .collect();
        for call in calls {
            let (n, result) = call.await.expect("the call ran");
            match result {
                Ok(out) => assert!(n >= 0 && out == n),
                Err(_) => assert!(n < 0, "{n} failed only with a bad neighbour"),
            }
        }
    }
}
