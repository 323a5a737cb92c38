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
	// Urgent signals (disk pressure, NATS requests) skip the debounce and
	// the rate limit, never single-flight or the concurrency cap.
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
