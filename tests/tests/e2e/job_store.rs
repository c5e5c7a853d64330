//! The jobs contract, on both stores: queueing with idempotency keys, claims under leases (one
//! claimer at a time, an expired lease claimed again), ends, retries, cancel, requeue, listing
//! and purge.

use std::sync::Arc;

use plughost_tenancy::{
    jobs::{Cancel, Claim, JobEnd, JobQuery, JobRecord, JobState},
    mongo::MongoStore,
    sqlite::SqliteStore,
    Store,
};

use crate::mongo_server::MongoServer;

fn job(id: &str, owner: Option<&str>, created_at: i64) -> JobRecord {
    JobRecord {
        id: id.to_owned(),
        owner: owner.map(str::to_owned),
        owner_kind: if owner.is_some() { "tenant" } else { "none" }.to_owned(),
        module: "m".to_owned(),
        function: "f".to_owned(),
        method: "POST".to_owned(),
        state: JobState::Queued,
        attempts: 0,
        max_attempts: 3,
        created_at,
        run_after: created_at,
        started_at: None,
        ended_at: None,
        lease_owner: None,
        lease_until: 0,
        request: r#"{"body":"aGk="}"#.to_owned(),
        result: None,
        error: None,
        callback_url: None,
        schedule: None,
        idempotency_key: None,
        scheduled_for: None,
    }
}

fn claim(replica: &str, now: i64, skip: &[Option<&str>]) -> Claim {
    Claim {
        replica: replica.to_owned(),
        now,
        lease_until: now + 1000,
        skip_owners: skip.iter().map(|o| o.map(str::to_owned)).collect(),
    }
}

async fn contract(store: Arc<dyn Store>) {
    // Nothing ready: nothing claimed.
    assert_eq!(store.claim_job(&claim("r1", 1000, &[])).await.unwrap(), None);

    // Queued, fetched, listed newest first by owner.
    store.queue_job(&job("j1", Some("t1"), 100), 0).await.unwrap();
    store.queue_job(&job("j2", Some("t2"), 200), 0).await.unwrap();
    let mut delayed = job("j3", None, 300);
    delayed.run_after = 5000;
    store.queue_job(&delayed, 0).await.unwrap();
    assert_eq!(store.job("j1").await.unwrap().unwrap(), job("j1", Some("t1"), 100));
    assert_eq!(store.job("nope").await.unwrap(), None);
    let all = store
        .jobs(&JobQuery {
            limit: 10,
            ..JobQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(all.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), ["j3", "j2", "j1"]);
    let page = store
        .jobs(&JobQuery {
            limit: 10,
            before: Some((200, "j2".to_owned())),
            ..JobQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), ["j1"]);
    let mine = store
        .jobs(&JobQuery {
            owner: Some("t2".to_owned()),
            limit: 10,
            ..JobQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].id, "j2");

    // Idempotency: the same key from the same owner returns the first job; from another, a new one.
    let mut keyed = job("k1", Some("t1"), 400);
    keyed.idempotency_key = Some("once".to_owned());
    assert_eq!(store.queue_job(&keyed, 10_000).await.unwrap().id, "k1");
    let mut again = keyed.clone();
    again.id = "k2".to_owned();
    assert_eq!(store.queue_job(&again, 10_000).await.unwrap().id, "k1");
    assert_eq!(store.job("k2").await.unwrap(), None, "nothing written for a repeated key");
    let mut other = again.clone();
    other.owner = Some("t2".to_owned());
    assert_eq!(store.queue_job(&other, 10_000).await.unwrap().id, "k2");
    // Past its expiry the key is free again.
    let mut later = keyed.clone();
    later.id = "k3".to_owned();
    later.created_at = 20_000;
    later.run_after = 20_000;
    assert_eq!(store.queue_job(&later, 30_000).await.unwrap().id, "k3");

    // Claims: the longest-waiting due job first, skipping the owners asked; the delayed job waits.
    let first = store.claim_job(&claim("r1", 1000, &[Some("t1")])).await.unwrap().unwrap();
    assert_eq!(first.id, "j2");
    assert_eq!(
        (first.state, first.attempts, first.lease_owner.as_deref()),
        (JobState::Running, 1, Some("r1"))
    );
    let second = store.claim_job(&claim("r2", 1000, &[])).await.unwrap().unwrap();
    assert_eq!(second.id, "j1");
    // The lease is the claimer's alone.
    assert!(store.renew_job("j2", "r1", 3000).await.unwrap());
    assert!(!store.renew_job("j2", "r2", 9000).await.unwrap());
    // j1's lease (1,000 + 1,000) expires: another replica claims it, a second attempt.
    let mut taken = Vec::new();
    while let Some(job) = store.claim_job(&claim("r3", 2500, &[])).await.unwrap() {
        taken.push(job);
    }
    let taken_ids: Vec<&str> = taken.iter().map(|j| j.id.as_str()).collect();
    assert!(
        taken_ids.contains(&"j1") && !taken_ids.contains(&"j2") && !taken_ids.contains(&"j3"),
        "{taken_ids:?}"
    );
    let j1 = store.job("j1").await.unwrap().unwrap();
    assert_eq!((j1.attempts, j1.lease_owner.as_deref()), (2, Some("r3")));
    // The replica that lost the lease cannot end the job.
    let ok = JobEnd {
        state: JobState::Succeeded,
        now: 2600,
        run_after: 2600,
        result: Some(r#"{"status":200}"#.to_owned()),
        error: None,
    };
    for other in taken.iter().filter(|j| j.id != "j1") {
        assert!(store.end_job(&other.id, "r3", &ok).await.unwrap());
    }
    assert!(!store.end_job("j1", "r2", &ok).await.unwrap());
    assert!(store.end_job("j1", "r3", &ok).await.unwrap());
    let j1 = store.job("j1").await.unwrap().unwrap();
    assert_eq!((j1.state, j1.ended_at, j1.lease_owner), (JobState::Succeeded, Some(2600), None));
    assert_eq!(j1.result.as_deref(), Some(r#"{"status":200}"#));

    // A retry: queued again from run_after, then dead.
    let retry = JobEnd {
        state: JobState::Queued,
        now: 2700,
        run_after: 4000,
        result: None,
        error: Some("502".to_owned()),
    };
    assert!(store.end_job("j2", "r1", &retry).await.unwrap());
    assert_eq!(store.claim_job(&claim("r1", 3999, &[Some("t1"), None])).await.unwrap(), None);
    let j2 = store.claim_job(&claim("r1", 4000, &[Some("t1"), None])).await.unwrap().unwrap();
    assert_eq!((j2.id.as_str(), j2.attempts, j2.error.as_deref()), ("j2", 2, Some("502")));
    let dead = JobEnd {
        state: JobState::Dead,
        now: 4100,
        run_after: 4100,
        result: None,
        error: Some("still 502".to_owned()),
    };
    assert!(store.end_job("j2", "r1", &dead).await.unwrap());
    let dead_jobs = store
        .jobs(&JobQuery {
            state: Some(JobState::Dead),
            limit: 10,
            ..JobQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(dead_jobs.len(), 1);
    let requeued = store.requeue_job("j2", 4200).await.unwrap().unwrap();
    assert_eq!((requeued.state, requeued.attempts, requeued.ended_at), (JobState::Queued, 0, None));

    // Cancel: a queued job is cancelled; a running or ended one is too late.
    match store.cancel_job("j3", 4300).await.unwrap() {
        Cancel::Cancelled(job) => assert_eq!(job.state, JobState::Cancelled),
        other => panic!("{other:?}"),
    }
    assert!(matches!(store.cancel_job("j1", 4300).await.unwrap(), Cancel::TooLate(_)));
    assert_eq!(store.cancel_job("nope", 4300).await.unwrap(), Cancel::NotFound);

    // Released: back in the queue, the attempt not counted.
    let j2 = store.claim_job(&claim("r9", 5000, &[])).await.unwrap().unwrap();
    assert_eq!((j2.id.as_str(), j2.attempts), ("j2", 1));
    assert!(store.release_job("j2", "r9").await.unwrap());
    let j2 = store.job("j2").await.unwrap().unwrap();
    assert_eq!((j2.state, j2.attempts, j2.lease_owner), (JobState::Queued, 0, None));

    let counts = store.job_counts(6000).await.unwrap();
    let count = |state| counts.by_state.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
    assert_eq!(count(JobState::Succeeded), 3, "j1, k1 and k2");
    assert_eq!(count(JobState::Cancelled), 1);
    assert!(count(JobState::Queued) >= 1);
    assert!(counts.oldest_due_ms > 0);

    // Ended jobs older than the retention go; the others stay.
    assert_eq!(
        store.purge_jobs(4400, 6000).await.unwrap(),
        4,
        "j1, j3, k1 and k2 ended before 4,400"
    );
    assert_eq!(store.job("j1").await.unwrap(), None);
    assert!(store.job("j2").await.unwrap().is_some());
}

/// Many claimers at once never take the same job twice.
async fn one_claimer_per_job(stores: [Arc<dyn Store>; 2]) {
    let store = &stores[0];
    for n in 0..60 {
        store.queue_job(&job(&format!("c{n:02}"), Some("t"), 10 + n), 0).await.unwrap();
    }
    let mut tasks = Vec::new();
    for r in 0..6 {
        let store = stores[r % 2].clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(job) = store.claim_job(&claim(&format!("r{r}"), 1000, &[])).await.unwrap() {
                got.push(job.id);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!((before, all.len()), (60, 60), "every job claimed exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sqlite_store_keeps_the_jobs_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract(Arc::new(SqliteStore::open(&dir.path().join("a.sqlite3")).unwrap())).await;
    // Two handles on one file stand for two processes.
    let path = dir.path().join("b.sqlite3");
    one_claimer_per_job([
        Arc::new(SqliteStore::open(&path).unwrap()),
        Arc::new(SqliteStore::open(&path).unwrap()),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_mongodb_store_keeps_the_jobs_contract() {
    let server = MongoServer::start();
    contract(Arc::new(MongoStore::connect(&server.uri(), "jobs").await.unwrap())).await;
    one_claimer_per_job([
        Arc::new(MongoStore::connect(&server.uri(), "claims").await.unwrap()),
        Arc::new(MongoStore::connect(&server.uri(), "claims").await.unwrap()),
    ])
    .await;
}
