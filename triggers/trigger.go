// Package triggers holds the sources of Signals: file growth (fsnotify), disk
// pressure (gopsutil), Redis memory (INFO), retention (what the targets'
// reclaimable estimate says a compaction would remove), NATS requests (and
// discovery of the fleet of watchers that answers them) and a fallback
// timer. A trigger only observes and emits policy.Signal values; the policy
// engine decides what to do with them.
package triggers

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
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
	// Method is a file target's configured method, backends.MethodAuto
	// (also when empty) or backends.MethodCopy: under disk pressure the
	// targets that will compact in place go first.
	Method string

	// Per-target trigger settings, with the config's overrides applied.
	Growth      GrowthSettings
	Disk        DiskSettings
	Timer       TimerSettings
	RedisMemory RedisMemorySettings
	Retention   RetentionSettings

	// Limits is the target's retention ([target.retention]); Estimator
	// measures what it would remove (nil: the retention trigger ignores the
	// target, and the disk trigger falls back to its own estimate).
	Limits    backends.Retention
	Estimator backends.Estimator
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

// logLimiter rate-limits repeated log lines, so that a flood of the same
// event (bad requests, say) costs a few lines, not one per event. Lines are
// grouped by a key, the reason they are logged for: the first line of a key
// is logged at once and opens a window of every; the lines of that key
// within the window are suppressed, and at its end one line stands for them:
// the last of them, with " (N similar suppressed in the last D)" appended
// and a suppressed=N attribute. That line opens the next window, so a
// steady flood logs one line per key per every. Flush logs the lines still
// waiting for the end of their window.
//
// The zero value is not usable; make one with newLogLimiter.
type logLimiter struct {
	logger *slog.Logger
	every  time.Duration

	mu   sync.Mutex
	keys map[string]*limitedKey
}

// limitedKey is the state of one key of a logLimiter.
type limitedKey struct {
	until      time.Time   // end of the window; lines before it are suppressed
	suppressed int         // lines suppressed in the window
	level      slog.Level  // the last suppressed line
	msg        string      // ...
	args       []any       // ...
	timer      *time.Timer // logs the summary at until; nil when none is due
}

// newLogLimiter returns a limiter that logs to logger at most one line per
// key per every.
func newLogLimiter(logger *slog.Logger, every time.Duration) *logLimiter {
	return &logLimiter{logger: logger, every: every, keys: make(map[string]*limitedKey)}
}

// Log logs msg with args at level, unless a line of key was logged less
// than every ago: then it is counted, and reported at the window's end.
func (l *logLimiter) Log(level slog.Level, key, msg string, args ...any) {
	now := time.Now()
	l.mu.Lock()
	k := l.keys[key]
	if k == nil || !now.Before(k.until) {
		if k == nil {
			k = &limitedKey{}
			l.keys[key] = k
		}
		k.until = now.Add(l.every)
		l.mu.Unlock()
		l.logger.Log(context.Background(), level, msg, args...)
		return
	}
	k.suppressed++
	k.level, k.msg, k.args = level, msg, args
	if k.timer == nil {
		k.timer = time.AfterFunc(k.until.Sub(now), func() { l.summarize(key, k, false) })
	}
	l.mu.Unlock()
}

// Flush logs the summaries of the lines suppressed so far (at shutdown:
// the count of a flood that just ended is not lost) and forgets every key.
func (l *logLimiter) Flush() {
	l.mu.Lock()
	keys := make(map[string]*limitedKey, len(l.keys))
	for key, k := range l.keys {
		keys[key] = k
	}
	l.mu.Unlock()
	for key, k := range keys {
		l.summarize(key, k, true)
	}
}

// summarize logs the summary line of the window of k, the state of key, if
// any line was suppressed in it. Unless final, the summary opens a new
// window; final forgets the key.
func (l *logLimiter) summarize(key string, k *limitedKey, final bool) {
	now := time.Now()
	l.mu.Lock()
	if l.keys[key] != k || (!final && k.timer == nil) {
		l.mu.Unlock()
		return // flushed meanwhile
	}
	if k.timer != nil {
		k.timer.Stop()
		k.timer = nil
	}
	n, level, msg, args := k.suppressed, k.level, k.msg, k.args
	window := l.every
	if final {
		// The part of the window gone by.
		window = min(l.every, l.every-k.until.Sub(now))
		delete(l.keys, key)
	} else {
		k.suppressed, k.msg, k.args = 0, "", nil
		k.until = now.Add(l.every)
	}
	l.mu.Unlock()
	if n == 0 {
		return
	}
	msg = fmt.Sprintf("%s (%d similar suppressed in the last %s)", msg, n, window.Round(time.Millisecond))
	l.logger.Log(context.Background(), level, msg, append(slices.Clip(args), "suppressed", n)...)
}
