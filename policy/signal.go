package policy

import (
	"time"

	"github.com/papyra/watcher/backends"
)

// Signal kinds: what happened. They are the `kind` label of
// papyra_compactor_triggers_total and the `trigger` field of reports.
const (
	KindGrowth      = "growth"
	KindDisk        = "disk"
	KindTimer       = "timer"
	KindRetention   = "retention"
	KindRedisMemory = "redis_memory"
	KindNATS        = "nats"
	KindManual      = "manual"
)

// Signal is the one message that travels the pipeline: a trigger saw
// something that may call for compacting some targets. The policy engine
// decides whether and when.
type Signal struct {
	// Kind is what happened (KindGrowth, ...).
	Kind string
	// Targets are the config names of the targets concerned, most urgent
	// first. Never paths. A name listed twice counts once; an empty list
	// is ignored (a trigger that means "every target" lists them all).
	Targets []string
	// Urgent signals (disk pressure, Redis memory pressure, NATS requests)
	// skip the debounce, the cooldown and the rate limit, never
	// single-flight or the concurrency cap. Only an urgent request (see
	// Requested) also skips the failure backoff of a failing target: an
	// urgent pressure signal waits it out like a routine retry would.
	Urgent bool
	// Reason is a human-readable why, for logs and status.
	Reason string
	// At is when the trigger observed it. It is for logs: the engine
	// measures debounce and max_wait from when it received the signal.
	At time.Time
	// DryRun asks for a report without changes (NATS dry_run). A dry-run
	// signal is never coalesced with a real compaction.
	DryRun bool
	// Scan asks for an integrity scan after the compaction (pre-migration);
	// its anomalies are returned in Report.Anomalies.
	Scan bool
	// Reply, if set, is called once per target in Targets with the report of
	// a compaction that started after the signal arrived (or a report whose
	// Error or Skipped says why none could run: "unknown target", "target
	// removed from config", "policy engine shut down", see ErrUnknownTarget
	// and friends). It must not block. It is called from the engine's
	// goroutines, or from Signal itself before it returns (unknown target,
	// engine shut down), never with the engine's lock held.
	Reply func(backends.Report)
}

// Prompt reports whether the signal is due without debounce: a timer or a
// retention signal says that something is due now, not that a writer is
// busy, so there is no quiet time to wait for. Cooldown, backoff and the
// rate limit still apply.
func (s Signal) Prompt() bool {
	return s.Kind == KindTimer || s.Kind == KindRetention
}

// Requested reports whether the signal is a request that a person or a
// pipeline sent (KindNATS, KindManual), as opposed to one a trigger raised by
// itself on what it observed (growth, timer, disk and Redis memory pressure).
// An urgent request runs a failing target at once; an urgent pressure signal
// keeps to the target's failure backoff, so that a target that cannot be
// compacted (ENOSPC under the very disk pressure that asks for it) is not
// retried at every check of the trigger.
func (s Signal) Requested() bool {
	return s.Kind == KindNATS || s.Kind == KindManual
}
