package main

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/executor"
	"github.com/papyra/watcher/triggers"
)

// openBackend makes the backend of one target.
func openBackend(cfg *Config, t TargetConfig) (backends.Backend, error) {
	switch t.Backend {
	case backends.KindJSON:
		return backends.NewJSON(backends.JSONConfig{Name: t.Name, Path: t.Path,
			StateDir: cfg.Watcher.StateDir, FollowSymlinks: t.FollowSymlinks})
	case backends.KindRotating:
		return backends.NewRotating(backends.RotatingConfig{Name: t.Name, Path: t.Path,
			MaxBytes: t.MaxBytes, MaxFiles: t.MaxFiles, StateDir: cfg.Watcher.StateDir,
			FollowSymlinks: t.FollowSymlinks})
	case backends.KindRedis:
		return backends.NewRedis(backends.RedisConfig{Name: t.Name, URL: t.URL, Prefix: t.Prefix,
			SystemID: t.SystemID, ApproxTrim: *t.ApproxTrim, TrimUnacked: t.TrimUnacked,
			Node: cfg.Watcher.Node})
	case backends.KindMemory:
		return backends.NewMemory(t.Name), nil
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
	tt := triggers.Target{Name: t.Name, Backend: t.Backend,
		Growth: triggers.GrowthSettings{MinBytes: *t.Triggers.Growth.MinBytes, MinRatio: *t.Triggers.Growth.MinRatio},
		Disk: triggers.DiskSettings{Interval: t.Triggers.Disk.Interval.Duration,
			HighPercent: *t.Triggers.Disk.HighPercent, LowPercent: *t.Triggers.Disk.LowPercent,
			PredictHorizon: t.Triggers.Disk.PredictHorizon.Duration},
		Timer: triggers.TimerSettings{Interval: t.Triggers.Timer.Interval.Duration,
			Jitter: float64(*t.Triggers.Timer.Jitter)},
		RedisMemory: triggers.RedisMemorySettings{Interval: t.Triggers.RedisMemory.Interval.Duration,
			HighPercent: *t.Triggers.RedisMemory.HighPercent, LowPercent: *t.Triggers.RedisMemory.LowPercent},
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

// newLogger makes the slog logger [watcher] asks for, writing to stderr.
func newLogger(w WatcherConfig) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(w.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	var log *slog.Logger
	if w.LogFormat == "json" {
		log = slog.New(slog.NewJSONHandler(os.Stderr, opts))
	} else {
		log = slog.New(slog.NewTextHandler(os.Stderr, opts))
	}
	// go-redis would print every failed dial to stderr; it goes to debug.
	backends.RouteRedisClientLogs(log)
	return log
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
