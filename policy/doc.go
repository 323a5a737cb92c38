// Package policy decides when to compact. Triggers hand it Signals; the
// Engine turns any number of them into few, well-spaced compactions and hands
// each one, as an executor.Job, to a Runner (the executor).
//
// The model follows Alertmanager's group_wait/group_interval: signals for a
// target are gathered into one pending run that becomes due after a quiet
// time, and everything that arrives while a run is in progress is gathered
// into exactly one follow-up run.
//
// # Per target
//
//   - Debounce (trailing): every routine signal restarts a quiet timer of
//     Debounce; when it expires the target is due.
//   - MaxWait: a target is due at the latest MaxWait after the first signal
//     of its pending run, however many signals keep arriving. MaxWait ≤ 0
//     means no such cap (Debounce alone decides).
//   - Cooldown: at least Cooldown between the END of one real compaction of
//     a target and the start of its next routine one. Measuring from the end
//     means a compaction that takes longer than Cooldown is still followed by
//     a full quiet period.
//   - Single-flight: never two jobs of one target at once (dry runs
//     included). Signals arriving while a target runs are coalesced into at
//     most one follow-up real run (and at most one follow-up dry run).
//   - Failure backoff: after a failed compaction (Report.Error set) the
//     target is retried by itself, BackoffBase after the failure, doubling
//     with every further consecutive failure, capped at BackoffMax. After
//     StuckAfter (3) consecutive failures the target is stuck: one warning is
//     logged, Observer.Stuck is told, and it is retried every BackoffMax,
//     never dropped. A success clears it (one info line). A skipped run
//     (Report.Skipped: another node holds the target) is neither a failure
//     nor a success: it leaves the failure count as it is.
//
// # Over all targets
//
//   - MaxConcurrent compactions at once (values below 1 mean 1).
//   - A token bucket (golang.org/x/time/rate) of Rate starts per hour with
//     Burst tokens for routine work. Rate ≤ 0 means unlimited; Burst < 1 with
//     a positive Rate means 1. While a target is failing (its last real
//     compaction failed) none of its runs takes a token: not its retries,
//     nor runs for routine signals that arrived meanwhile (they wait for
//     the backoff like a retry). The attempt that began the failure streak
//     took one; the backoff paces the rest, so one failing target cannot
//     empty the bucket the others share.
//
// # Urgent signals
//
// Urgent signals (disk pressure, Redis memory pressure, NATS requests) skip
// debounce, cooldown and the token bucket, and do not consume a token. They
// never skip single-flight or the MaxConcurrent cap.
//
// The failure backoff is skipped only by urgent requests (Signal.Requested:
// a NATS request, which a person or a pipeline sent): such a request during
// backoff runs the target at once, and the failure count still decides the
// backoff of later retries. Urgent pressure signals (disk, Redis memory)
// wait the backoff out: they repeat at every check of their trigger, and a
// target that fails under pressure (ENOSPC on a full disk) would otherwise be
// retried, and logged, at that pace.
// Among due runs, urgent ones start first (in the order their signals
// arrived and, within one signal, in the order of Signal.Targets), then
// routine ones by due time.
//
// # Replies
//
// A Signal's Reply is called exactly once per distinct target with the
// report of a compaction that started after the signal arrived, or with a
// report whose Error says why none will run: ErrUnknownTarget,
// ErrTargetRemoved or ErrClosed.
//
// # Dry runs and scans
//
// Dry-run signals are gathered into their own pending run, are never merged
// with a real one, skip cooldown and backoff (they change nothing), and do
// not count as the target's last compaction. Scan signals set Job.Scan on the
// real run they are merged into, so one urgent scanned run satisfies both a
// compaction request and a pre-migration scan.
//
// All time comes from the time package, so the engine runs in
// testing/synctest virtual time; an idle engine sleeps on one timer.
package policy
