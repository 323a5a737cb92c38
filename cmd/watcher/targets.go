package main

import (
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/jsonfile"
	"github.com/papyra/watcher/backends/memory"
	"github.com/papyra/watcher/backends/redis"
	"github.com/papyra/watcher/backends/rotating"
	"github.com/papyra/watcher/executor"
	"github.com/papyra/watcher/triggers"
)

// openBackend makes the backend of one target.
func openBackend(cfg *Config, t TargetConfig) (backends.Backend, error) {
	switch t.Backend {
	case backends.KindJSON:
		return jsonfile.New(jsonfile.Config{Name: t.Name, Path: t.Path,
			StateDir: cfg.Watcher.StateDir, FollowSymlinks: t.FollowSymlinks, Method: t.Method})
	case backends.KindRotating:
		return rotating.New(rotating.Config{Name: t.Name, Path: t.Path,
			MaxBytes: t.MaxBytes, MaxFiles: t.MaxFiles, StateDir: cfg.Watcher.StateDir,
			FollowSymlinks: t.FollowSymlinks, Method: t.Method})
	case backends.KindRedis:
		return redis.New(redis.Config{Name: t.Name, URL: t.URL, Prefix: t.Prefix,
			SystemID: t.SystemID, ApproxTrim: *t.ApproxTrim, TrimUnacked: t.TrimUnacked,
			Node: cfg.Watcher.Node})
	case backends.KindMemory:
		return memory.New(t.Name), nil
	}
	return nil, fmt.Errorf("target %q: unknown backend %q", t.Name, t.Backend)
}

// executorTarget is the executor's view of a target.
func executorTarget(t TargetConfig, b backends.Backend) executor.Target {
	return executor.Target{Name: t.Name, Backend: b, Retention: t.Retention,
		PartialLineGrace: t.Policy.PartialLineGrace.Duration,
		IOBytesPerSecond: *t.Policy.IOBytesPerSecond}
}

// triggerTarget is the triggers' view of a target.
func triggerTarget(t TargetConfig) triggers.Target {
	tt := triggers.Target{Name: t.Name, Backend: t.Backend, Method: t.Method,
		Growth: triggers.GrowthSettings{MinBytes: *t.Triggers.Growth.MinBytes, MinRatio: *t.Triggers.Growth.MinRatio},
		Disk: triggers.DiskSettings{Interval: t.Triggers.Disk.Interval.Duration,
			HighPercent: *t.Triggers.Disk.HighPercent, LowPercent: *t.Triggers.Disk.LowPercent,
			PredictHorizon: t.Triggers.Disk.PredictHorizon.Duration},
		Timer: triggers.TimerSettings{Interval: t.Triggers.Timer.Interval.Duration,
			Jitter: float64(*t.Triggers.Timer.Jitter)},
		RedisMemory: triggers.RedisMemorySettings{Interval: t.Triggers.RedisMemory.Interval.Duration,
			HighPercent: *t.Triggers.RedisMemory.HighPercent, LowPercent: *t.Triggers.RedisMemory.LowPercent},
		Retention: triggers.RetentionSettings{Interval: t.Triggers.Retention.Interval.Duration,
			MinReclaimableRatio: *t.Triggers.Retention.MinReclaimableRatio,
			MinReclaimableBytes: *t.Triggers.Retention.MinReclaimableBytes},
		Limits: t.Retention,
	}
	if ma := t.Retention.MaxAgeSeconds; ma != nil {
		tt.Retention.AgeSlack = t.Triggers.Retention.AgeSlack.For(*ma)
	}
	switch t.Backend {
	case backends.KindJSON:
		tt.Files = []string{t.Path}
	case backends.KindRotating:
		tt.Files = []string{t.Path}
		for i := 1; i < t.MaxFiles; i++ {
			tt.Files = append(tt.Files, t.Path+"."+strconv.Itoa(i))
		}
	case backends.KindRedis:
		tt.RedisURL = t.URL
	}
	return tt
}

// selectTargets returns the configured targets named in only (all when only
// is empty), or an error naming the unknown ones.
func selectTargets(cfg *Config, only []string) ([]TargetConfig, error) {
	if len(only) == 0 {
		return cfg.Targets, nil
	}
	byName := map[string]TargetConfig{}
	for _, t := range cfg.Targets {
		byName[t.Name] = t
	}
	var out []TargetConfig
	var unknown []string
	for _, n := range only {
		t, ok := byName[n]
		if !ok {
			unknown = append(unknown, n)
			continue
		}
		out = append(out, t)
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("unknown target(s): %s", strings.Join(unknown, ", "))
	}
	return out, nil
}

// warningsFor returns the config's warnings without those about targets
// that are not in selected: a command working on some targets warns about
// them and the config as a whole only.
func warningsFor(cfg *Config, warnings []string, selected []TargetConfig) []string {
	in := map[string]bool{}
	for _, t := range selected {
		in[t.Name] = true
	}
	drop := map[string]bool{}
	for _, t := range cfg.Targets {
		if !in[t.Name] {
			for _, w := range t.warnings {
				drop[w] = true
			}
		}
	}
	var out []string
	for _, w := range warnings {
		if !drop[w] {
			out = append(out, w)
		}
	}
	return out
}

// newLogger makes the slog logger [watcher] asks for, writing to out
// (stderr, or a progress line's writer that clears the line first). It is
// the one place a logger is built: durations are printed as text ("1.5s")
// in both formats, not as nanoseconds in JSON.
func newLogger(w WatcherConfig, out io.Writer) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(w.LogLevel))
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: durationAsText}
	var log *slog.Logger
	if w.LogFormat == "json" {
		log = slog.New(slog.NewJSONHandler(out, opts))
	} else {
		log = slog.New(slog.NewTextHandler(out, opts))
	}
	// go-redis would print every failed dial to stderr; it goes to debug.
	redis.RouteClientLogs(log)
	return log
}

// durationAsText is a slog ReplaceAttr that prints time.Duration values as
// Go duration strings ("1.5s") instead of integer nanoseconds.
func durationAsText(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// parseUnix parses a Unix time in seconds, with a fraction.
func parseUnix(s string) (time.Time, error) {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 || f > 1e11 {
		return time.Time{}, fmt.Errorf("--now %q is not a Unix time in seconds", s)
	}
	sec := int64(f)
	return time.Unix(sec, int64((f-float64(sec))*1e9)), nil
}
