//! The one list of job types. The apalis board shows every queue named here; a test compares it
//! with the queues the workers run, so a new job type added to one and not the other fails CI.

use crate::{
    Job, agent_presence::AgentDisconnected, assign_agent::AssignAgent, audit::RecordAudit,
    close_conversation::CloseConversation, email::SendEmail,
    enqueue_conversation::EnqueueConversation, reassign_conversation::ReassignConversation,
    timers::ExpireTimer, webhook::DeliverWebhook,
};

/// Something done once per job type (see [`each_job`]).
pub trait JobVisitor {
    /// Called once for job type `J`.
    fn job<J: Job>(&mut self);
}

/// Calls `visitor` once per job type, in a stable order. Add a new job type here.
pub fn each_job(visitor: &mut impl JobVisitor) {
    visitor.job::<EnqueueConversation>();
    visitor.job::<AssignAgent>();
    visitor.job::<CloseConversation>();
    visitor.job::<ReassignConversation>();
    visitor.job::<RecordAudit>();
    visitor.job::<AgentDisconnected>();
    visitor.job::<ExpireTimer>();
    visitor.job::<DeliverWebhook>();
    visitor.job::<SendEmail>();
}

/// The queue name (`Job::QUEUE`) of every job type, in [`each_job`] order.
pub fn names() -> Vec<&'static str> {
    struct Names(Vec<&'static str>);
    impl JobVisitor for Names {
        fn job<J: Job>(&mut self) {
            self.0.push(J::QUEUE);
        }
    }
    let mut names = Names(Vec::new());
    each_job(&mut names);
    names.0
}

#[cfg(test)]
mod tests {
    #[test]
    fn queue_names_are_unique() {
        let names = super::names();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
    }
}
