package main

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/papyra/watcher/backends"
)

// Config is the whole config file (INTERFACE.md). Global [policy] and
// [triggers.*] values are the defaults of every target; a target may override
// any of them in [target.policy] and [target.triggers.*].
type Config struct {
	Watcher  WatcherConfig  `toml:"watcher"`
	Policy   PolicyConfig   `toml:"policy"`
	Triggers TriggersConfig `toml:"triggers"`
	NATS     NATSConfig     `toml:"nats"`
	Targets  []TargetConfig `toml:"target"`

	// Path is the absolute path of the file the config was read from.
	Path string `toml:"-"`
}

// WatcherConfig is [watcher].
type WatcherConfig struct {
	StateDir string `toml:"state_dir"`
	// HTTPListen is nil when the key is absent (the default address), ""
	// when HTTP is turned off.
	HTTPListen *string `toml:"http_listen"`
	LogLevel   string  `toml:"log_level"`
	LogFormat  string  `toml:"log_format"`
	Node       string  `toml:"node"`
	// CompactionTimeout bounds one compaction (extension; default 30m).
	CompactionTimeout Duration `toml:"compaction_timeout"`
	// LockTimeout is how long a compaction waits for another compactor of
	// the same target (another process) before reporting it busy
	// (extension; default 10s).
	LockTimeout Duration `toml:"lock_timeout"`
	// ShutdownGrace is how long SIGTERM waits for a running compaction
	// before abandoning it safely (extension; default 30s).
	ShutdownGrace Duration `toml:"shutdown_grace"`
}

// PolicyConfig is [policy] and [target.policy]. Pointer fields are unset
// when nil, so a target's table overrides only what it names.
type PolicyConfig struct {
	Debounce         *Duration `toml:"debounce"`
	MaxWait          *Duration `toml:"max_wait"`
	Cooldown         *Duration `toml:"cooldown"`
	MaxConcurrent    *int      `toml:"max_concurrent"`
	Rate             *float64  `toml:"rate"`
	Burst            *int      `toml:"burst"`
	IOBytesPerSecond *int64    `toml:"io_bytes_per_second"`
	PartialLineGrace *Duration `toml:"partial_line_grace"`
	BackoffBase      *Duration `toml:"backoff_base"`
	BackoffMax       *Duration `toml:"backoff_max"`
}

// TriggersConfig is [triggers] and [target.triggers].
type TriggersConfig struct {
	Timer       TimerConfig       `toml:"timer"`
	Growth      GrowthConfig      `toml:"growth"`
	Disk        DiskConfig        `toml:"disk"`
	RedisMemory RedisMemoryConfig `toml:"redis_memory"`
}

// TimerConfig is [triggers.timer].
type TimerConfig struct {
	Interval *Duration `toml:"interval"`
	Jitter   *Percent  `toml:"jitter"`
}

// GrowthConfig is [triggers.growth].
type GrowthConfig struct {
	MinBytes *int64   `toml:"min_bytes"`
	MinRatio *float64 `toml:"min_ratio"`
}

// DiskConfig is [triggers.disk].
type DiskConfig struct {
	Interval       *Duration `toml:"interval"`
	HighPercent    *float64  `toml:"high_percent"`
	LowPercent     *float64  `toml:"low_percent"`
	PredictHorizon *Duration `toml:"predict_horizon"`
}

// RedisMemoryConfig is [triggers.redis_memory].
type RedisMemoryConfig struct {
	Interval    *Duration `toml:"interval"`
	HighPercent *float64  `toml:"high_percent"`
	LowPercent  *float64  `toml:"low_percent"`
}

// NATSConfig is [nats].
type NATSConfig struct {
	URL           string `toml:"url"`
	SubjectPrefix string `toml:"subject_prefix"`
	User          string `toml:"user"`
	Password      string `toml:"password"`
	Token         string `toml:"token"`
	CredsFile     string `toml:"creds_file"`
	NKeySeedFile  string `toml:"nkey_seed_file"`
	TLSCA         string `toml:"tls_ca"`
	TLSCert       string `toml:"tls_cert"`
	TLSKey        string `toml:"tls_key"`
	MaxBodyBytes  int    `toml:"max_body_bytes"`
}

// TargetConfig is one [[target]].
type TargetConfig struct {
	Name    string `toml:"name"`
	Backend string `toml:"backend"`

	// json, rotating
	Path           string `toml:"path"`
	MaxBytes       int64  `toml:"max_bytes"`
	MaxFiles       int    `toml:"max_files"`
	FollowSymlinks bool   `toml:"follow_symlinks"`

	// redis
	URL         string `toml:"url"`
	Prefix      string `toml:"prefix"`
	SystemID    string `toml:"system_id"`
	ApproxTrim  *bool  `toml:"approx_trim"`
	TrimUnacked bool   `toml:"trim_unacked"`

	Retention backends.Retention `toml:"retention"`
	Policy    PolicyConfig       `toml:"policy"`
	Triggers  TriggersConfig     `toml:"triggers"`
}

// Duration is a TOML string such as "5s" or "6h".
type Duration struct{ time.Duration }

// valueError is a value a custom type refused. go-toml does not say where
// such a value stands, so decodeProblems finds its line and key.
type valueError struct {
	value string
	msg   string
}

func (e *valueError) Error() string { return e.msg }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return &valueError{string(b), fmt.Sprintf("%q is not a duration (use a string such as \"30s\", \"5m\", \"6h\")", b)}
	}
	if v < 0 {
		return &valueError{string(b), fmt.Sprintf("duration %q must not be negative", b)}
	}
	d.Duration = v
	return nil
}

// MarshalText formats the duration.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Percent is a TOML string such as "10%", stored as a fraction (0.1).
type Percent float64

// UnmarshalText parses "10%" (or a bare fraction such as "0.1").
func (p *Percent) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	frac := 1.0
	if strings.HasSuffix(s, "%") {
		s, frac = strings.TrimSuffix(s, "%"), 100
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(v) || v < 0 || v/frac > 1 {
		return &valueError{string(b), fmt.Sprintf("%q is not a percentage from 0%% to 100%% (use a string such as \"10%%\")", b)}
	}
	*p = Percent(v / frac)
	return nil
}

func ptr[T any](v T) *T { return &v }

// defaultPolicy and defaultTriggers are INTERFACE.md's defaults.
func defaultPolicy() PolicyConfig {
	return PolicyConfig{
		Debounce:         &Duration{5 * time.Second},
		MaxWait:          &Duration{60 * time.Second},
		Cooldown:         &Duration{30 * time.Second},
		MaxConcurrent:    ptr(1),
		Rate:             ptr(30.0),
		Burst:            ptr(5),
		IOBytesPerSecond: ptr(int64(0)),
		PartialLineGrace: &Duration{30 * time.Second},
		BackoffBase:      &Duration{30 * time.Second},
		BackoffMax:       &Duration{30 * time.Minute},
	}
}

func defaultTriggers() TriggersConfig {
	return TriggersConfig{
		Timer:  TimerConfig{Interval: &Duration{6 * time.Hour}, Jitter: ptr(Percent(0.1))},
		Growth: GrowthConfig{MinBytes: ptr(int64(64 << 20)), MinRatio: ptr(1.0)},
		Disk: DiskConfig{Interval: &Duration{15 * time.Second}, HighPercent: ptr(85.0),
			LowPercent: ptr(80.0), PredictHorizon: &Duration{15 * time.Minute}},
		RedisMemory: RedisMemoryConfig{Interval: &Duration{10 * time.Second},
			HighPercent: ptr(80.0), LowPercent: ptr(70.0)},
	}
}

// overlay sets every field of dst that src sets.
func overlay[T any](dst **T, src *T) {
	if src != nil {
		*dst = src
	}
}

func (p *PolicyConfig) apply(o PolicyConfig) {
	overlay(&p.Debounce, o.Debounce)
	overlay(&p.MaxWait, o.MaxWait)
	overlay(&p.Cooldown, o.Cooldown)
	overlay(&p.MaxConcurrent, o.MaxConcurrent)
	overlay(&p.Rate, o.Rate)
	overlay(&p.Burst, o.Burst)
	overlay(&p.IOBytesPerSecond, o.IOBytesPerSecond)
	overlay(&p.PartialLineGrace, o.PartialLineGrace)
	overlay(&p.BackoffBase, o.BackoffBase)
	overlay(&p.BackoffMax, o.BackoffMax)
}

func (t *TriggersConfig) apply(o TriggersConfig) {
	overlay(&t.Timer.Interval, o.Timer.Interval)
	overlay(&t.Timer.Jitter, o.Timer.Jitter)
	overlay(&t.Growth.MinBytes, o.Growth.MinBytes)
	overlay(&t.Growth.MinRatio, o.Growth.MinRatio)
	overlay(&t.Disk.Interval, o.Disk.Interval)
	overlay(&t.Disk.HighPercent, o.Disk.HighPercent)
	overlay(&t.Disk.LowPercent, o.Disk.LowPercent)
	overlay(&t.Disk.PredictHorizon, o.Disk.PredictHorizon)
	overlay(&t.RedisMemory.Interval, o.RedisMemory.Interval)
	overlay(&t.RedisMemory.HighPercent, o.RedisMemory.HighPercent)
	overlay(&t.RedisMemory.LowPercent, o.RedisMemory.LowPercent)
}

// defaultHTTPListen is where /metrics, /healthz, /readyz and /status are
// served when the config does not say: loopback only.
const defaultHTTPListen = "127.0.0.1:9464"

// Limits that no sane config reaches; larger values are refused rather than
// trusted.
const (
	maxTargets       = 100000
	maxMaxFiles      = 10000
	maxMaxConcurrent = 1024
)

// ConfigError is a config that cannot be used. It lists every problem found.
type ConfigError struct {
	Path     string
	Problems []string
}

func (e *ConfigError) Error() string {
	if len(e.Problems) == 1 {
		return fmt.Sprintf("%s: %s", e.Path, e.Problems[0])
	}
	return fmt.Sprintf("%s: %d problems:\n  %s", e.Path, len(e.Problems), strings.Join(e.Problems, "\n  "))
}

// LoadConfig reads, decodes and validates a config file. Relative paths in
// it (state_dir, target paths, TLS and credential files) are taken relative
// to the directory of the config file, cleaned and made absolute. It returns
// the config and its warnings (risky but valid settings); the error is a
// *ConfigError when the file is invalid.
func LoadConfig(path string) (*Config, []string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, nil, err
	}
	data, err := os.ReadFile(abs)
	if err != nil {
		return nil, nil, fmt.Errorf("read config: %w", err)
	}
	return ParseConfig(abs, data)
}

// ParseConfig decodes and validates config data read from path (absolute).
func ParseConfig(path string, data []byte) (*Config, []string, error) {
	cfg := &Config{Path: path}
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		return nil, nil, &ConfigError{Path: path, Problems: decodeProblems(err, data)}
	}
	warnings, problems := cfg.normalize()
	if len(problems) > 0 {
		return nil, warnings, &ConfigError{Path: path, Problems: problems}
	}
	return cfg, warnings, nil
}

// decodeProblems turns go-toml's errors into "line N: key: what" lines.
func decodeProblems(err error, data []byte) []string {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		var out []string
		for _, e := range strict.Errors {
			row, _ := e.Position()
			out = append(out, fmt.Sprintf("line %d: unknown key %q", row, strings.Join(e.Key(), ".")))
		}
		return out
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, _ := de.Position()
		key := strings.Join(de.Key(), ".")
		if key != "" {
			return []string{fmt.Sprintf("line %d: %s: %s", row, key, de.Error())}
		}
		return []string{fmt.Sprintf("line %d: %s", row, de.Error())}
	}
	var ve *valueError
	if errors.As(err, &ve) {
		if line, key, ok := locateValue(data, ve.value); ok {
			return []string{fmt.Sprintf("line %d: %s: %s", line, key, ve.msg)}
		}
		return []string{ve.msg}
	}
	return []string{err.Error()}
}

// locateValue finds the first `key = value` line whose value is raw (quoted
// or not) and returns its line number and dotted key, with the table it
// stands in.
func locateValue(data []byte, raw string) (line int, key string, ok bool) {
	table := ""
	for i, l := range strings.Split(string(data), "\n") {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "[") {
			table = strings.Trim(t, "[] \t")
			continue
		}
		k, v, found := strings.Cut(t, "=")
		if !found {
			continue
		}
		v = strings.TrimSpace(v)
		if c := strings.Index(v, " #"); c >= 0 {
			v = strings.TrimSpace(v[:c])
		}
		if v == raw || strings.Trim(v, `"'`) == raw {
			k = strings.TrimSpace(k)
			if table != "" {
				k = table + "." + k
			}
			return i + 1, k, true
		}
	}
	return 0, "", false
}

// normalize fills defaults, resolves paths and per-target overrides, and
// checks every value. It returns warnings and problems.
func (c *Config) normalize() (warnings, problems []string) {
	bad := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }
	warn := func(format string, a ...any) { warnings = append(warnings, fmt.Sprintf(format, a...)) }
	dir := filepath.Dir(c.Path)
	absPath := func(p string) string {
		if p == "" {
			return ""
		}
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		return filepath.Clean(p)
	}

	w := &c.Watcher
	if w.StateDir == "" {
		w.StateDir = ".watcher"
	}
	if w.HTTPListen == nil {
		w.HTTPListen = ptr(defaultHTTPListen)
	}
	w.StateDir = absPath(w.StateDir)
	switch w.LogLevel {
	case "":
		w.LogLevel = "info"
	case "debug", "info", "warn", "error":
	default:
		bad("watcher.log_level: %q is not one of debug, info, warn, error", w.LogLevel)
	}
	switch w.LogFormat {
	case "":
		w.LogFormat = "text"
	case "text", "json":
	default:
		bad("watcher.log_format: %q is not one of text, json", w.LogFormat)
	}
	if w.Node == "" {
		// The short hostname: a node name is one NATS subject token.
		if h, err := os.Hostname(); err == nil && h != "" {
			w.Node, _, _ = strings.Cut(h, ".")
		} else {
			w.Node = "watcher"
		}
	}
	if strings.ContainsAny(w.Node, ".*> \t") {
		bad("watcher.node: %q must not contain '.', '*', '>' or spaces (it is part of NATS subjects)", w.Node)
	}
	if w.CompactionTimeout.Duration == 0 {
		w.CompactionTimeout.Duration = 30 * time.Minute
	}
	if w.LockTimeout.Duration == 0 {
		w.LockTimeout.Duration = 10 * time.Second
	}
	if w.ShutdownGrace.Duration == 0 {
		w.ShutdownGrace.Duration = 30 * time.Second
	}

	pol := defaultPolicy()
	pol.apply(c.Policy)
	c.Policy = pol
	trg := defaultTriggers()
	trg.apply(c.Triggers)
	c.Triggers = trg
	problems = append(problems, checkPolicy("policy", c.Policy)...)
	problems = append(problems, checkTriggers("triggers", c.Triggers)...)
	if *c.Policy.MaxConcurrent < 1 || *c.Policy.MaxConcurrent > maxMaxConcurrent {
		bad("policy.max_concurrent: %d is not between 1 and %d", *c.Policy.MaxConcurrent, maxMaxConcurrent)
	}

	n := &c.NATS
	if n.SubjectPrefix == "" {
		n.SubjectPrefix = "papyra.compaction"
	}
	if strings.ContainsAny(n.SubjectPrefix, "*> \t") || strings.HasPrefix(n.SubjectPrefix, ".") || strings.HasSuffix(n.SubjectPrefix, ".") {
		bad("nats.subject_prefix: %q is not a valid subject prefix", n.SubjectPrefix)
	}
	if n.MaxBodyBytes == 0 {
		n.MaxBodyBytes = 64 << 10
	}
	if n.MaxBodyBytes < 0 || n.MaxBodyBytes > 8<<20 {
		bad("nats.max_body_bytes: %d is not between 1 and 8388608", n.MaxBodyBytes)
	}
	for _, f := range []*string{&n.CredsFile, &n.NKeySeedFile, &n.TLSCA, &n.TLSCert, &n.TLSKey} {
		*f = absPath(*f)
	}
	if (n.TLSCert == "") != (n.TLSKey == "") {
		bad("nats: tls_cert and tls_key go together")
	}

	if len(c.Targets) == 0 {
		warn("no [[target]] configured: the watcher has nothing to compact")
	}
	if len(c.Targets) > maxTargets {
		bad("%d targets: more than %d is not supported", len(c.Targets), maxTargets)
	}
	names := map[string]int{}
	paths := map[string]string{}
	for i := range c.Targets {
		t := &c.Targets[i]
		where := fmt.Sprintf("target[%d]", i)
		if t.Name != "" {
			where = fmt.Sprintf("target %q", t.Name)
		}
		switch {
		case t.Name == "":
			bad("%s: name is required", where)
		case !validName(t.Name):
			bad("%s: name may only contain letters, digits, '-' and '_'", where)
		default:
			if j, dup := names[t.Name]; dup {
				bad("%s: duplicate name (also target[%d])", where, j)
			}
			names[t.Name] = i
		}
		if err := t.Retention.Validate(); err != nil {
			bad("%s: retention: %v", where, err)
		}
		switch t.Backend {
		case backends.KindJSON, backends.KindRotating:
			if t.Path == "" {
				bad("%s: %s backend needs path", where, t.Backend)
			} else {
				t.Path = absPath(t.Path)
				if other, dup := paths[t.Path]; dup {
					bad("%s: path %s is also the path of target %q", where, t.Path, other)
				}
				paths[t.Path] = t.Name
			}
			if t.URL != "" || t.Prefix != "" || t.SystemID != "" || t.ApproxTrim != nil || t.TrimUnacked {
				bad("%s: url, prefix, system_id, approx_trim and trim_unacked are for redis targets", where)
			}
			if t.Backend == backends.KindRotating {
				if t.MaxBytes <= 0 {
					bad("%s: rotating backend needs max_bytes > 0 (as the Papyra writer is configured)", where)
				}
				if t.MaxFiles < 1 || t.MaxFiles > maxMaxFiles {
					bad("%s: rotating backend needs max_files between 1 and %d, got %d", where, maxMaxFiles, t.MaxFiles)
				}
			} else if t.MaxBytes != 0 || t.MaxFiles != 0 {
				bad("%s: max_bytes and max_files are for rotating targets", where)
			}
		case backends.KindRedis:
			if t.URL == "" {
				bad("%s: redis backend needs url (redis://host:port/db)", where)
			} else if !strings.HasPrefix(t.URL, "redis://") && !strings.HasPrefix(t.URL, "rediss://") {
				bad("%s: url must start with redis:// or rediss://", where)
			}
			if t.Path != "" || t.MaxBytes != 0 || t.MaxFiles != 0 {
				bad("%s: path, max_bytes and max_files are for file targets", where)
			}
			if t.Prefix == "" {
				t.Prefix = "papyra"
			}
			if t.SystemID == "" {
				t.SystemID = "local"
			}
			if t.ApproxTrim == nil {
				t.ApproxTrim = ptr(true)
			}
			if t.TrimUnacked {
				warn("%s: trim_unacked = true: entries that consumer groups have not read or acknowledged may be trimmed", where)
			}
		case backends.KindMemory:
			warn("%s: memory backend lives inside the Papyra process; compaction is a no-op", where)
		case "":
			bad("%s: backend is required (json, rotating, redis or memory)", where)
		default:
			bad("%s: backend %q is not one of json, rotating, redis, memory", where, t.Backend)
		}

		p := c.Policy
		p.apply(t.Policy)
		t.Policy = p
		tr := c.Triggers
		tr.apply(t.Triggers)
		t.Triggers = tr
		problems = append(problems, checkPolicy(where+": policy", t.Policy)...)
		problems = append(problems, checkTriggers(where+": triggers", t.Triggers)...)

		if t.Retention.IsZero() && t.Backend != backends.KindMemory {
			warn("%s: no retention: compaction only drops lines that are not records", where)
		}
		if ma := t.Retention.MaxAgeSeconds; ma != nil && t.Triggers.Timer.Interval.Duration > 0 &&
			t.Triggers.Timer.Interval.Seconds() > *ma {
			warn("%s: the timer interval %s is longer than max_age_seconds (%gs): compaction should run more often than retention thresholds", where, t.Triggers.Timer.Interval.Duration, *ma)
		}
	}
	return warnings, problems
}

func validName(s string) bool {
	for _, r := range s {
		if !(r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return len(s) <= 128
}

func checkPolicy(where string, p PolicyConfig) (problems []string) {
	bad := func(format string, a ...any) { problems = append(problems, where+"."+fmt.Sprintf(format, a...)) }
	if *p.Rate < 0 || math.IsNaN(*p.Rate) {
		bad("rate: %v must not be negative", *p.Rate)
	}
	if *p.Burst < 1 {
		bad("burst: %d must be at least 1", *p.Burst)
	}
	if *p.IOBytesPerSecond < 0 {
		bad("io_bytes_per_second: %d must not be negative", *p.IOBytesPerSecond)
	}
	if p.MaxWait.Duration < p.Debounce.Duration {
		bad("max_wait: %s is shorter than debounce %s", p.MaxWait.Duration, p.Debounce.Duration)
	}
	if p.BackoffBase.Duration <= 0 || p.BackoffMax.Duration < p.BackoffBase.Duration {
		bad("backoff_base/backoff_max: need 0 < backoff_base <= backoff_max")
	}
	return problems
}

func checkTriggers(where string, t TriggersConfig) (problems []string) {
	bad := func(format string, a ...any) { problems = append(problems, where+"."+fmt.Sprintf(format, a...)) }
	if *t.Growth.MinBytes < 0 {
		bad("growth.min_bytes: %d must not be negative", *t.Growth.MinBytes)
	}
	if *t.Growth.MinRatio < 0 || math.IsNaN(*t.Growth.MinRatio) {
		bad("growth.min_ratio: %v must not be negative", *t.Growth.MinRatio)
	}
	checkWater := func(name string, high, low float64) {
		if !(low > 0 && low < high && high <= 100) {
			bad("%s: need 0 < low_percent (%v) < high_percent (%v) <= 100", name, low, high)
		}
	}
	checkWater("disk", *t.Disk.HighPercent, *t.Disk.LowPercent)
	checkWater("redis_memory", *t.RedisMemory.HighPercent, *t.RedisMemory.LowPercent)
	if t.Disk.Interval.Duration < 100*time.Millisecond {
		bad("disk.interval: %s is too short (at least 100ms)", t.Disk.Interval.Duration)
	}
	if t.RedisMemory.Interval.Duration < 100*time.Millisecond {
		bad("redis_memory.interval: %s is too short (at least 100ms)", t.RedisMemory.Interval.Duration)
	}
	if d := t.Timer.Interval.Duration; d != 0 && d < time.Second {
		bad("timer.interval: %s is too short (at least 1s, or \"0s\" to turn it off)", d)
	}
	return problems
}
