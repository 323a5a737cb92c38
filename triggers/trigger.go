// Package triggers holds the sources of Signals: file growth (fsnotify), disk
// pressure (gopsutil), Redis memory (INFO), NATS requests and a fallback
// timer. A trigger only observes and emits policy.Signal values; the policy
// engine decides what to do with them.
package triggers

import (
	"context"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/policy"
)

// Emit hands a Signal to the policy engine. It never blocks for long.
type Emit func(policy.Signal)

// Target is what the triggers know of one configured target.
type Target struct {
	// Name is the target's config name.
	Name string
	// Backend is the backend kind (backends.KindJSON, ...).
	Backend string
	// Files are the absolute paths that make up a file target, whether they
	// exist yet or not: for json the file, for rotating the active file and
	// its segments path.1 … path.<max_files-1>. Empty for other backends.
	Files []string
	// RedisURL is the url of a redis target (its server identity groups
	// targets for the Redis memory trigger). Empty for other backends.
	RedisURL string

	// Per-target trigger settings, with the config's overrides applied.
	Growth      GrowthSettings
	Disk        DiskSettings
	Timer       TimerSettings
	RedisMemory RedisMemorySettings
}

// GrowthSettings is [triggers.growth].
type GrowthSettings struct {
	MinBytes int64
	MinRatio float64
}

// DiskSettings is [triggers.disk].
type DiskSettings struct {
	Interval       time.Duration
	HighPercent    float64
	LowPercent     float64
	PredictHorizon time.Duration
}

// TimerSettings is [triggers.timer]. Interval 0 turns the timer off; Jitter
// is a fraction of Interval (0.1 for "10%").
type TimerSettings struct {
	Interval time.Duration
	Jitter   float64
}

// RedisMemorySettings is [triggers.redis_memory].
type RedisMemorySettings struct {
	Interval    time.Duration
	HighPercent float64
	LowPercent  float64
}

// Source is one trigger. Run emits Signals until ctx is done. Observe is
// told of every finished compaction (so growth baselines, timers and
// reclaimable estimates follow what really happened); it must not block.
// SetTargets replaces the target list on a config reload.
type Source interface {
	Run(ctx context.Context, emit Emit) error
	Observe(r backends.Report)
	SetTargets(targets []Target)
}
