//! The schedules contract, on both stores: names unique per owner, listing, pause and resume,
//! polling for what is due, and firing a tick (its job queued once however many replicas fire
//! it, the schedule moved on once).

use std::sync::Arc;

use plughost_tenancy::{
    jobs::{JobRecord, JobState},
    mongo::MongoStore,
    schedules::{Advance, ScheduleRecord},
    sqlite::SqliteStore,
    Store,
};

use crate::mongo_server::MongoServer;

fn schedule(owner: &str, name: &str, next_run: i64) -> ScheduleRecord {
    ScheduleRecord {
        key: ScheduleRecord::key_of(owner, name),
        id: format!("id-{owner}-{name}"),
        name: name.to_owned(),
        owner: owner.to_owned(),
        owner_kind: "tenant".to_owned(),
        cron: "* * * * * *".to_owned(),
        timezone: None,
        path: "m/f/".to_owned(),
        method: "POST".to_owned(),
        body: Some("{\"n\":1}".to_owned()),
        catch_up: false,
        paused: false,
        created_at: 1,
        next_run,
        last_run: None,
        last_job: None,
        status: "ok".to_owned(),
    }
}

fn tick_job(id: &str) -> JobRecord {
    JobRecord {
        id: id.to_owned(),
        owner: Some("t1".to_owned()),
        owner_kind: "tenant".to_owned(),
        module: "m".to_owned(),
        function: "f".to_owned(),
        method: "POST".to_owned(),
        state: JobState::Queued,
        attempts: 0,
        max_attempts: 3,
        created_at: 1000,
        run_after: 1000,
        started_at: None,
        ended_at: None,
        lease_owner: None,
        lease_until: 0,
        request: "{}".to_owned(),
        result: None,
        error: None,
        callback_url: None,
        schedule: Some("every".to_owned()),
        idempotency_key: None,
        scheduled_for: Some(1000),
    }
}

fn advance(last_run: i64, next_run: i64, job: Option<&str>) -> Advance {
    Advance {
        last_run: Some(last_run),
        next_run,
        last_job: job.map(str::to_owned),
        status: "ok".to_owned(),
    }
}

async fn contract(store: Arc<dyn Store>) {
    // Unique per owner; the same name under another owner is another schedule.
    assert!(store.insert_schedule(&schedule("t1", "every", 1000)).await.unwrap());
    assert!(!store.insert_schedule(&schedule("t1", "every", 5)).await.unwrap());
    assert!(store.insert_schedule(&schedule("t2", "every", 3000)).await.unwrap());
    assert!(store.insert_schedule(&schedule("t1", "nightly", 9000)).await.unwrap());
    let kept = store.schedule("t1/every").await.unwrap().unwrap();
    assert_eq!(kept, schedule("t1", "every", 1000), "the first insert is kept whole");
    let names = |list: Vec<ScheduleRecord>| list.into_iter().map(|s| s.key).collect::<Vec<_>>();
    assert_eq!(names(store.schedules(Some("t1")).await.unwrap()), ["t1/every", "t1/nightly"]);
    assert_eq!(store.schedules(None).await.unwrap().len(), 3);

    // Polling: running schedules, earliest first; a paused one is left out.
    assert_eq!(names(store.upcoming_schedules(2).await.unwrap()), ["t1/every", "t2/every"]);
    let paused = store.pause_schedule("t2/every", true, None).await.unwrap().unwrap();
    assert!(paused.paused);
    assert_eq!(names(store.upcoming_schedules(5).await.unwrap()), ["t1/every", "t1/nightly"]);
    let resumed = store.pause_schedule("t2/every", false, Some(4000)).await.unwrap().unwrap();
    assert_eq!((resumed.paused, resumed.next_run), (false, 4000));
    assert_eq!(store.schedule("t2/every").await.unwrap().unwrap().next_run, 4000);
    assert_eq!(store.pause_schedule("t9/none", true, None).await.unwrap(), None);

    // Firing a tick: the first replica queues the job and moves the schedule on; a second
    // firing the same tick queues nothing and moves nothing.
    let fired = store
        .fire_schedule(
            "t1/every",
            1000,
            &advance(1000, 2000, Some("tick-1000")),
            Some(&tick_job("tick-1000")),
        )
        .await
        .unwrap();
    assert!(fired);
    let again = store
        .fire_schedule(
            "t1/every",
            1000,
            &advance(1000, 2500, Some("tick-1000")),
            Some(&tick_job("tick-1000")),
        )
        .await
        .unwrap();
    assert!(!again, "the tick's job exists: not queued twice");
    let moved = store.schedule("t1/every").await.unwrap().unwrap();
    assert_eq!(
        (moved.next_run, moved.last_run, moved.last_job.as_deref()),
        (2000, Some(1000), Some("tick-1000")),
        "moved on once, by the first"
    );
    let job = store.job("tick-1000").await.unwrap().unwrap();
    assert_eq!(
        (job.state, job.schedule.as_deref(), job.scheduled_for),
        (JobState::Queued, Some("every"), Some(1000))
    );

    // A tick that queues nothing (the function is gone) still moves the schedule on, with why.
    let missing = Advance {
        status: "function not found".to_owned(),
        ..advance(2000, 3000, None)
    };
    assert!(!store.fire_schedule("t1/every", 2000, &missing, None).await.unwrap());
    let moved = store.schedule("t1/every").await.unwrap().unwrap();
    assert_eq!(
        (moved.next_run, moved.last_job.as_deref(), moved.status.as_str()),
        (3000, Some("tick-1000"), "function not found")
    );

    // Removed: gone from reads and polls.
    assert!(store.remove_schedule("t1/every").await.unwrap());
    assert!(!store.remove_schedule("t1/every").await.unwrap());
    assert_eq!(store.schedule("t1/every").await.unwrap(), None);
    assert_eq!(names(store.upcoming_schedules(5).await.unwrap()), ["t2/every", "t1/nightly"]);
}

/// Two handles fire the same ticks at once: each tick's job is queued exactly once.
async fn one_job_per_tick(stores: [Arc<dyn Store>; 2]) {
    assert!(stores[0].insert_schedule(&schedule("t1", "race", 0)).await.unwrap());
    let mut tasks = Vec::new();
    for store in stores {
        tasks.push(tokio::spawn(async move {
            let mut queued = Vec::new();
            for tick in 0..40_i64 {
                let id = format!("race-{tick}");
                let adv = advance(tick, tick + 1, Some(&id));
                if store.fire_schedule("t1/race", tick, &adv, Some(&tick_job(&id))).await.unwrap() {
                    queued.push(tick);
                }
            }
            queued
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    assert_eq!(all, (0..40).collect::<Vec<_>>(), "each tick queued once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sqlite_store_keeps_the_schedules_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract(Arc::new(SqliteStore::open(&dir.path().join("a.sqlite3")).unwrap())).await;
    let path = dir.path().join("b.sqlite3");
    one_job_per_tick([
        Arc::new(SqliteStore::open(&path).unwrap()),
        Arc::new(SqliteStore::open(&path).unwrap()),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_mongodb_store_keeps_the_schedules_contract() {
    let server = MongoServer::start();
    contract(Arc::new(MongoStore::connect(&server.uri(), "schedules").await.unwrap())).await;
    one_job_per_tick([
        Arc::new(MongoStore::connect(&server.uri(), "ticks").await.unwrap()),
        Arc::new(MongoStore::connect(&server.uri(), "ticks").await.unwrap()),
    ])
    .await;
}
