package main

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/redis"
	"github.com/papyra/watcher/internal/urlcheck"
	"github.com/papyra/watcher/snapshot"
	"github.com/papyra/watcher/triggers"
)

// Config is the whole config file (docs/config.md). Global [policy] and
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
	// SnapshotTTL is how long a backup snapshot is kept when no
	// post-backup releases it (extension; default 1h).
	SnapshotTTL Duration `toml:"snapshot_ttl"`
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
	Retention   RetentionConfig   `toml:"retention"`
}

// RetentionConfig is [triggers.retention].
type RetentionConfig struct {
	Interval            *Duration `toml:"interval"`
	MinReclaimableRatio *float64  `toml:"min_reclaimable_ratio"`
	MinReclaimableBytes *int64    `toml:"min_reclaimable_bytes"`
	AgeSlack            *Slack    `toml:"age_slack"`
}

// Slack is age_slack: a duration ("1m") or a share of max_age_seconds
// ("10%").
type Slack struct {
	Duration time.Duration
	Fraction float64 // used when Duration is 0
}

// UnmarshalText parses "10%" or a duration.
func (s *Slack) UnmarshalText(b []byte) error {
	str := strings.TrimSpace(string(b))
	if strings.HasSuffix(str, "%") {
		var p Percent
		if err := p.UnmarshalText(b); err != nil {
			return err
		}
		*s = Slack{Fraction: float64(p)}
		return nil
	}
	var d Duration
	if err := d.UnmarshalText(b); err != nil {
		return &valueError{fmt.Sprintf("%q is neither a duration nor a percentage (use \"10%%\" or \"1m\")", b)}
	}
	*s = Slack{Duration: d.Duration}
	return nil
}

// MarshalText formats the slack.
func (s Slack) MarshalText() ([]byte, error) {
	if s.Duration == 0 && s.Fraction > 0 {
		return []byte(strconv.FormatFloat(100*s.Fraction, 'g', -1, 64) + "%"), nil
	}
	return []byte(s.Duration.String()), nil
}

// For is the slack for an age limit of maxAge seconds: at least 1s.
func (s Slack) For(maxAge float64) time.Duration {
	d := s.Duration
	if d == 0 {
		d = time.Duration(s.Fraction * maxAge * float64(time.Second))
	}
	return max(d, time.Second)
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
	Method         string `toml:"method"`

	// redis
	URL         string `toml:"url"`
	Prefix      string `toml:"prefix"`
	SystemID    string `toml:"system_id"`
	ApproxTrim  *bool  `toml:"approx_trim"`
	TrimUnacked bool   `toml:"trim_unacked"`

	Retention backends.Retention `toml:"retention"`
	Policy    PolicyConfig       `toml:"policy"`
	Triggers  TriggersConfig     `toml:"triggers"`

	// warnings are the config's warnings about this target (among those
	// LoadConfig returns), so that a command working on some targets
	// shows only theirs.
	warnings []string
}

// Duration is a TOML string such as "5s" or "6h".
type Duration struct{ time.Duration }

// valueError is a value a custom type refused; checkDocument says where
// it stands.
type valueError struct{ msg string }

func (e *valueError) Error() string { return e.msg }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return &valueError{fmt.Sprintf("%q is not a duration (use a string such as \"30s\", \"5m\", \"6h\")", b)}
	}
	if v < 0 {
		return &valueError{fmt.Sprintf("duration %q must not be negative", b)}
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
		return &valueError{fmt.Sprintf("%q is not a percentage from 0%% to 100%% (use a string such as \"10%%\")", b)}
	}
	*p = Percent(v / frac)
	return nil
}

func ptr[T any](v T) *T { return &v }

// defaultPolicy and defaultTriggers are the documented defaults (docs/config.md).
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
		Retention: RetentionConfig{Interval: &Duration{10 * time.Second}, MinReclaimableRatio: ptr(0.1),
			MinReclaimableBytes: ptr(int64(1 << 20)), AgeSlack: &Slack{Fraction: 0.1}},
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
	overlay(&t.Retention.Interval, o.Retention.Interval)
	overlay(&t.Retention.MinReclaimableRatio, o.Retention.MinReclaimableRatio)
	overlay(&t.Retention.MinReclaimableBytes, o.Retention.MinReclaimableBytes)
	overlay(&t.Retention.AgeSlack, o.Retention.AgeSlack)
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
// to the directory of the config file, cleaned and made absolute. The
// environment overrides some values (applyEnv). It returns the config
// and its warnings (risky but valid settings); the error is a *ConfigError
// listing every problem when the file is invalid, and there are no
// warnings then.
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

// ParseConfig decodes and validates config data read from path (absolute),
// with the environment overrides of the process.
func ParseConfig(path string, data []byte) (*Config, []string, error) {
	return parseConfig(path, data, os.Environ())
}

// parseConfig is ParseConfig with the environment environ ("NAME=value"
// entries, as os.Environ returns them).
func parseConfig(path string, data []byte, environ []string) (*Config, []string, error) {
	doc := checkDocument(data)
	if doc.clean == nil {
		return nil, nil, &ConfigError{Path: path, Problems: doc.problems}
	}
	// The document without the keys reported above is checked further, so
	// that one pass lists every problem.
	cfg := &Config{Path: path}
	dec := toml.NewDecoder(bytes.NewReader(doc.clean))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		return nil, nil, &ConfigError{Path: path, Problems: append(doc.problems, decodeProblems(err, data)...)}
	}
	env, envWarnings := cfg.applyEnv(environ)
	ps := &problemList{doc: doc, env: env}
	warnings := append(cfg.normalize(ps), envWarnings...)
	if all := append(doc.problems, ps.out...); len(all) > 0 {
		sortByLine(all)
		return nil, nil, &ConfigError{Path: path, Problems: all}
	}
	return cfg, warnings, nil
}

// problemList collects the problems of the semantic checks.
type problemList struct {
	doc docCheck
	env envSource
	out []string
}

// add records a problem about the indexed keys ("watcher.node",
// "target[0].url"; the first one the document has gives the line). It is
// dropped when the checker already reported one of the keys: the problem
// would be a consequence.
func (p *problemList) add(keys []string, format string, a ...any) {
	var lines []string
	for _, k := range keys {
		if p.doc.skip(k) {
			return
		}
		if _, fromEnv := p.env[k]; !fromEnv {
			lines = append(lines, k)
		}
	}
	p.out = append(p.out, p.doc.lines.at(lines...)+fmt.Sprintf(format, a...))
}

// name is how a message names the indexed key k with the dotted key
// shown: "watcher.node (from WATCHER_NODE)" when the environment set it.
func (p *problemList) name(k, shown string) string {
	if v, ok := p.env[k]; ok {
		return shown + " (from " + v + ")"
	}
	return shown
}

// sortByLine orders problems by their "line N: " prefix; those without a
// line keep their order, after the others.
func sortByLine(problems []string) {
	line := func(s string) int {
		var n int
		if _, err := fmt.Sscanf(s, "line %d:", &n); err == nil {
			return n
		}
		return math.MaxInt
	}
	sort.SliceStable(problems, func(i, j int) bool { return line(problems[i]) < line(problems[j]) })
}

// envSource maps the indexed keys the environment set to the variable
// that set them.
type envSource map[string]string

// Environment variables that override the config file: what differs per
// node or is secret, so that a config shared by a fleet (a Kubernetes
// ConfigMap) holds no secret. Empty values count as unset.
const (
	envNode          = "WATCHER_NODE"
	envNATSToken     = "WATCHER_NATS_TOKEN"
	envNATSPassword  = "WATCHER_NATS_PASSWORD"
	envRedisPassword = "WATCHER_REDIS_PASSWORD"
)

// redisPasswordEnv is the variable holding the password of the redis
// target name: WATCHER_REDIS_PASSWORD_ and the name in upper case with '-'
// as '_' ("events-eu": WATCHER_REDIS_PASSWORD_EVENTS_EU).
func redisPasswordEnv(name string) string {
	return envRedisPassword + "_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// applyEnv applies the environment overrides and returns what they set:
//
//	WATCHER_NODE                     [watcher] node
//	WATCHER_NATS_TOKEN               [nats] token
//	WATCHER_NATS_PASSWORD            [nats] password
//	WATCHER_REDIS_PASSWORD_<TARGET>  the password in the url of that redis target
//	WATCHER_REDIS_PASSWORD           the password in the url of every other redis target
//
// A redis password replaces the one in the url (the user name, if any, is
// kept); a url that does not parse is left alone, and reported. A
// WATCHER_REDIS_PASSWORD_<TARGET> that names no redis target is a warning:
// a misspelt name would leave its target without the password.
func (c *Config) applyEnv(environ []string) (envSource, []string) {
	src := envSource{}
	vars := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && v != "" {
			vars[k] = v
		}
	}
	get := func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	}
	set := func(dst *string, key, name string) {
		if v, ok := get(name); ok {
			*dst = v
			src[key] = name
		}
	}
	set(&c.Watcher.Node, "watcher.node", envNode)
	set(&c.NATS.Token, "nats.token", envNATSToken)
	set(&c.NATS.Password, "nats.password", envNATSPassword)
	for i := range c.Targets {
		t := &c.Targets[i]
		if t.Backend != backends.KindRedis || t.URL == "" {
			continue
		}
		pw, ok := get(redisPasswordEnv(t.Name))
		name := redisPasswordEnv(t.Name)
		if !ok {
			pw, ok = get(envRedisPassword)
			name = envRedisPassword
		}
		if !ok {
			continue
		}
		u, err := url.Parse(t.URL)
		if err != nil {
			continue
		}
		user := ""
		if u.User != nil {
			user = u.User.Username()
		}
		u.User = url.UserPassword(user, pw)
		t.URL = u.String()
		src[fmt.Sprintf("target[%d].password", i)] = name
	}
	return src, c.unusedRedisPasswords(vars)
}

// unusedRedisPasswords warns of each WATCHER_REDIS_PASSWORD_<TARGET> of
// vars that no redis target reads, naming the variables the redis targets
// do read.
func (c *Config) unusedRedisPasswords(vars map[string]string) []string {
	read := map[string]bool{}
	other := map[string]TargetConfig{} // variables of targets that are not redis
	var known []string
	for _, t := range c.Targets {
		v := redisPasswordEnv(t.Name)
		if t.Backend != backends.KindRedis {
			other[v] = t
			continue
		}
		read[v] = true
		known = append(known, fmt.Sprintf("target %q reads %s", t.Name, v))
	}
	var unused []string
	for k := range vars {
		if strings.HasPrefix(k, envRedisPassword+"_") && !read[k] {
			unused = append(unused, k)
		}
	}
	sort.Strings(unused)
	var warnings []string
	for _, k := range unused {
		var why []string
		if t, ok := other[k]; ok {
			why = append(why, fmt.Sprintf("target %q is a %s target, not a redis one", t.Name, t.Backend))
		}
		if len(known) == 0 {
			why = append(why, "there is no redis target")
		}
		why = append(why, known...)
		warnings = append(warnings, fmt.Sprintf("%s is set but no redis target reads it (%s)", k, strings.Join(why, "; ")))
	}
	return warnings
}

// decodeProblems turns go-toml's errors into "line N: key: what" lines:
// syntax errors (checkDocument reports everything else first).
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
		msg := strings.TrimPrefix(de.Error(), "toml: ")
		if key != "" {
			return []string{fmt.Sprintf("line %d: %s: %s", row, key, msg)}
		}
		return []string{fmt.Sprintf("line %d: %s", row, msg)}
	}
	var ve *valueError
	if errors.As(err, &ve) {
		return []string{ve.msg}
	}
	return []string{err.Error()}
}

// normalize fills defaults, resolves paths and per-target overrides, and
// checks every value. It returns warnings; problems go to ps.
func (c *Config) normalize(ps *problemList) (warnings []string) {
	bad := ps.add
	k := func(keys ...string) []string { return keys }
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
	if msg := listenProblem(*w.HTTPListen); msg != "" {
		bad(k("watcher.http_listen"), "watcher.http_listen: %q %s", *w.HTTPListen, msg)
	}
	switch w.LogLevel {
	case "":
		w.LogLevel = "info"
	case "debug", "info", "warn", "error":
	default:
		bad(k("watcher.log_level"), "watcher.log_level: %q is not one of debug, info, warn, error", w.LogLevel)
	}
	switch w.LogFormat {
	case "":
		w.LogFormat = "text"
	case "text", "json":
	default:
		bad(k("watcher.log_format"), "watcher.log_format: %q is not one of text, json", w.LogFormat)
	}
	if w.Node == "" {
		// The short hostname: a node name is one NATS subject token.
		if h, err := os.Hostname(); err == nil && h != "" {
			w.Node, _, _ = strings.Cut(h, ".")
		} else {
			w.Node = "watcher"
		}
	}
	if strings.ContainsAny(w.Node, ".*> \t\r\n") {
		bad(k("watcher.node"), "%s: %q must not contain '.', '*', '>' or spaces (it is part of NATS subjects)", ps.name("watcher.node", "watcher.node"), w.Node)
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
	if w.SnapshotTTL.Duration == 0 {
		w.SnapshotTTL.Duration = snapshot.DefaultTTL
	}
	if w.SnapshotTTL.Duration < 0 || w.SnapshotTTL.Duration > snapshot.MaxTTL {
		bad(k("watcher.snapshot_ttl"), "watcher.snapshot_ttl: %s is out of range (more than 0, at most %s)", w.SnapshotTTL.Duration, snapshot.MaxTTL)
	}

	pol := defaultPolicy()
	pol.apply(c.Policy)
	c.Policy = pol
	trg := defaultTriggers()
	trg.apply(c.Triggers)
	c.Triggers = trg
	globalPolicy := checkPolicy(c.Policy)
	globalTriggers := checkTriggers(c.Triggers)
	for _, p := range globalPolicy {
		bad(prefixed("policy.", p.keys), "policy.%s", p.msg)
	}
	for _, p := range globalTriggers {
		bad(prefixed("triggers.", p.keys), "triggers.%s", p.msg)
	}
	if *c.Policy.MaxConcurrent < 1 || *c.Policy.MaxConcurrent > maxMaxConcurrent {
		bad(k("policy.max_concurrent"), "policy.max_concurrent: %d is not between 1 and %d", *c.Policy.MaxConcurrent, maxMaxConcurrent)
	}

	c.normalizeNATS(ps, absPath, &warnings)

	if len(c.Targets) == 0 {
		warn("no [[target]] configured: the watcher has nothing to compact")
	}
	if len(c.Targets) > maxTargets {
		bad(nil, "%d targets: more than %d is not supported", len(c.Targets), maxTargets)
	}
	names := map[string]int{}
	paths := map[string]string{}
	for i := range c.Targets {
		t := &c.Targets[i]
		tk := fmt.Sprintf("target[%d]", i)
		key := func(names ...string) []string {
			out := make([]string, 0, len(names)+1)
			for _, n := range names {
				out = append(out, tk+"."+n)
			}
			return append(out, tk)
		}
		// The warnings about this target are the target's too.
		warn := func(format string, a ...any) {
			msg := fmt.Sprintf(format, a...)
			warnings = append(warnings, msg)
			t.warnings = append(t.warnings, msg)
		}
		where := unnamedTarget(i)
		if t.Name != "" {
			where = fmt.Sprintf("target %q", t.Name)
		}
		switch {
		case t.Name == "":
			bad(key("name"), "%s: name is required", where)
		case !validName(t.Name):
			bad(key("name"), "%s: name may only contain letters, digits, '-' and '_' (at most 128)", where)
		default:
			if j, dup := names[t.Name]; dup {
				other := unnamedTarget(j)
				if line, ok := ps.doc.lines[fmt.Sprintf("target[%d]", j)]; ok {
					other += fmt.Sprintf(" (line %d)", line)
				}
				bad(key("name"), "%s: duplicate name: %s has it too", where, other)
			}
			names[t.Name] = i
		}
		// Each limit on its own, so that each problem has its key's line.
		for _, r := range []struct {
			key string
			ret backends.Retention
		}{
			{"max_records", backends.Retention{MaxRecords: t.Retention.MaxRecords}},
			{"max_age_seconds", backends.Retention{MaxAgeSeconds: t.Retention.MaxAgeSeconds}},
			{"max_total_bytes", backends.Retention{MaxTotalBytes: t.Retention.MaxTotalBytes}},
		} {
			if err := r.ret.Validate(); err != nil {
				bad(key("retention."+r.key, "retention"), "%s: retention: %v", where, err)
			}
		}

		switch t.Backend {
		case backends.KindJSON, backends.KindRotating:
			if t.Path == "" {
				bad(key("path"), "%s: %s backend needs path", where, t.Backend)
			} else {
				t.Path = absPath(t.Path)
				if other, dup := paths[t.Path]; dup {
					bad(key("path"), "%s: path %s is also the path of target %q", where, t.Path, other)
				}
				paths[t.Path] = t.Name
				if d := filepath.Dir(t.Path); !dirExists(d) {
					warn("%s: the directory of path %s does not exist (%s): nothing to compact until it is created", where, t.Path, d)
				}
			}
			switch t.Method {
			case "":
				t.Method = backends.MethodAuto
			case backends.MethodAuto, backends.MethodCopy:
			default:
				bad(key("method"), "%s: method %q is not one of auto, copy", where, t.Method)
			}
			if t.URL != "" || t.Prefix != "" || t.SystemID != "" || t.ApproxTrim != nil || t.TrimUnacked {
				bad(key("url", "prefix", "system_id", "approx_trim", "trim_unacked"), "%s: url, prefix, system_id, approx_trim and trim_unacked are for redis targets", where)
			}
			if t.Backend == backends.KindRotating {
				if t.MaxBytes <= 0 {
					bad(key("max_bytes"), "%s: rotating backend needs max_bytes > 0 (as the Papyra writer is configured)", where)
				}
				if t.MaxFiles < 1 || t.MaxFiles > maxMaxFiles {
					bad(key("max_files"), "%s: rotating backend needs max_files between 1 and %d, got %d", where, maxMaxFiles, t.MaxFiles)
				}
			} else if t.MaxBytes != 0 || t.MaxFiles != 0 {
				bad(key("max_bytes", "max_files"), "%s: max_bytes and max_files are for rotating targets", where)
			}
		case backends.KindRedis:
			if t.URL == "" {
				bad(key("url"), "%s: redis backend needs url (redis://host:port/db, rediss://… or unix:///path/to/socket)", where)
			} else if _, _, err := redis.ParseURL(t.URL); err != nil {
				bad(key("url"), "%s: url: %v", where, err)
			}
			if t.Path != "" || t.MaxBytes != 0 || t.MaxFiles != 0 || t.Method != "" {
				bad(key("path", "max_bytes", "max_files", "method"), "%s: path, max_bytes, max_files and method are for file targets", where)
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
			if t.Method != "" {
				bad(key("method"), "%s: method is for file targets", where)
			}
			warn("%s: memory backend lives inside the Papyra process; compaction is a no-op", where)
		case "":
			bad(key("backend"), "%s: backend is required (json, rotating, redis or memory)", where)
		default:
			bad(key("backend"), "%s: backend %q is not one of json, rotating, redis, memory", where, t.Backend)
		}

		p := c.Policy
		p.apply(t.Policy)
		t.Policy = p
		tr := c.Triggers
		tr.apply(t.Triggers)
		t.Triggers = tr
		// A problem the target inherits from [policy] or [triggers] was
		// reported there: it is not repeated for each target.
		for _, p := range without(checkPolicy(t.Policy), globalPolicy) {
			bad(append(prefixed(tk+".policy.", p.keys), tk), "%s: policy.%s", where, p.msg)
		}
		for _, p := range without(checkTriggers(t.Triggers), globalTriggers) {
			bad(append(prefixed(tk+".triggers.", p.keys), tk), "%s: triggers.%s", where, p.msg)
		}

		if t.Retention.IsZero() && t.Backend != backends.KindMemory {
			warn("%s: no retention: compaction only drops lines that are not records", where)
		}
		if ma := t.Retention.MaxAgeSeconds; ma != nil && t.Triggers.Timer.Interval.Duration > 0 &&
			t.Triggers.Timer.Interval.Seconds() > *ma {
			warn("%s: the timer interval %s is longer than max_age_seconds (%gs): compaction should run more often than retention thresholds", where, t.Triggers.Timer.Interval.Duration, *ma)
		}
		for _, w := range retentionWarnings(c, *t) {
			warn("%s: %s", where, w)
		}
	}
	return warnings
}

// normalizeNATS checks [nats] as the NATS trigger does when the daemon
// starts, so that validate refuses what run would.
func (c *Config) normalizeNATS(ps *problemList, absPath func(string) string, warnings *[]string) {
	n := &c.NATS
	before := len(ps.out)
	if n.SubjectPrefix == "" {
		n.SubjectPrefix = "papyra.compaction"
	}
	// The check the NATS trigger makes when it starts: validate must not
	// pass a prefix that run refuses.
	if err := triggers.ValidateSubjectPrefix(n.SubjectPrefix); err != nil {
		ps.add([]string{"nats.subject_prefix"}, "nats.subject_prefix: %v", err)
	}
	if n.MaxBodyBytes == 0 {
		n.MaxBodyBytes = 64 << 10
	}
	if n.MaxBodyBytes < 0 || n.MaxBodyBytes > 8<<20 {
		ps.add([]string{"nats.max_body_bytes"}, "nats.max_body_bytes: %d is not between 1 and 8388608", n.MaxBodyBytes)
	}
	for _, f := range []*string{&n.CredsFile, &n.NKeySeedFile, &n.TLSCA, &n.TLSCert, &n.TLSKey} {
		*f = absPath(*f)
	}
	if (n.TLSCert == "") != (n.TLSKey == "") {
		ps.add([]string{"nats.tls_cert", "nats.tls_key"}, "nats: tls_cert and tls_key go together")
	}
	if n.URL == "" {
		return
	}
	if err := checkNATSURLs(n.URL); err != nil {
		ps.add([]string{"nats.url"}, "nats.url: %v", err)
	}
	var auth []string
	for _, a := range []struct {
		key, shown string
		set        bool
	}{
		{"nats.token", "token", n.Token != ""},
		{"nats.user", "user", n.User != ""},
		{"nats.creds_file", "creds_file", n.CredsFile != ""},
		{"nats.nkey_seed_file", "nkey_seed_file", n.NKeySeedFile != ""},
	} {
		if a.set {
			auth = append(auth, ps.name(a.key, a.shown))
		}
	}
	if len(auth) > 1 {
		ps.add([]string{"nats.token", "nats.user", "nats.creds_file", "nats.nkey_seed_file"},
			"nats: %s are set: set only one of token, user (with password), creds_file, nkey_seed_file", strings.Join(auth, " and "))
	}
	if n.Password != "" && n.User == "" {
		ps.add([]string{"nats.password"}, "nats: %s is set without user", ps.name("nats.password", "password"))
	}
	missing := false
	for _, f := range []struct{ key, path string }{
		{"creds_file", n.CredsFile}, {"nkey_seed_file", n.NKeySeedFile},
		{"tls_ca", n.TLSCA}, {"tls_cert", n.TLSCert}, {"tls_key", n.TLSKey},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			// It may be mounted where the daemon runs (a Kubernetes Secret).
			*warnings = append(*warnings, fmt.Sprintf("nats.%s: %v: run refuses to start until it can be read", f.key, err))
			missing = true
		}
	}
	if len(ps.out) == before && !missing {
		// What is left to check (the files' contents), as run checks it.
		if _, err := triggers.NATSOptions(natsConfig(c), nil); err != nil {
			ps.add([]string{"nats.tls_ca", "nats.tls_cert", "nats.tls_key", "nats.creds_file", "nats.nkey_seed_file", "nats.url"}, "nats: %v", err)
		}
	}
}

// checkNATSURLs checks a nats.url value as nats.go reads it: a
// comma-separated list of URLs with the schemes nats://, tls://, ws:// or
// wss:// (HOST:PORT alone means nats://), not mixing websocket and other
// URLs.
func checkNATSURLs(list string) error {
	var ws, other bool
	n := 0
	for _, raw := range strings.Split(list, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		n++
		full := raw
		if !strings.Contains(raw, "://") {
			full = "nats://" + raw
		}
		u, err := urlcheck.Parse(full)
		if err != nil {
			return err
		}
		shown := urlcheck.Redact(full)
		switch u.Scheme {
		case "nats", "tls":
			other = true
		case "ws", "wss":
			ws = true
		default:
			return fmt.Errorf("%s: scheme %q is not one of nats://, tls://, ws://, wss://", shown, u.Scheme)
		}
		if u.Hostname() == "" {
			return fmt.Errorf("%s has no host (want %s://HOST:PORT)", shown, u.Scheme)
		}
	}
	if n == 0 {
		return errors.New("no URL in the list")
	}
	if ws && other {
		return errors.New("websocket (ws://, wss://) and other URLs cannot be mixed")
	}
	return nil
}

// listenProblem says what is wrong with an http_listen value, or returns
// "" when the daemon can listen on it ("" turns HTTP off).
func listenProblem(addr string) string {
	if addr == "" {
		return ""
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return `is not HOST:PORT (such as "127.0.0.1:9464" or ":9464"; "" turns HTTP off)`
	}
	if why := urlcheck.HostProblem(host); why != "" {
		return fmt.Sprintf("has host %q, which %s", host, why)
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return fmt.Sprintf("has port %q: want a number from 0 to 65535", port)
	}
	return ""
}

// dirExists reports whether d is an existing directory, or cannot be
// looked at (then it is not reported as missing).
func dirExists(d string) bool {
	st, err := os.Stat(d)
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	return st.IsDir()
}

func validName(s string) bool {
	for _, r := range s {
		if !(r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return len(s) <= 128
}

// valueProblem is a problem of [policy] or [triggers] values: a message
// relative to the table ("burst: 0 must be at least 1") and the keys
// involved, relative to the table too.
type valueProblem struct {
	keys []string
	msg  string
}

// prefixed returns keys with prefix prepended.
func prefixed(prefix string, keys []string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = prefix + k
	}
	return out
}

// without returns the problems of ps that are not in global.
func without(ps, global []valueProblem) []valueProblem {
	var out []valueProblem
	for _, p := range ps {
		if !slices.ContainsFunc(global, func(g valueProblem) bool { return g.msg == p.msg }) {
			out = append(out, p)
		}
	}
	return out
}

func checkPolicy(p PolicyConfig) (problems []valueProblem) {
	bad := func(keys []string, format string, a ...any) {
		problems = append(problems, valueProblem{keys, fmt.Sprintf(format, a...)})
	}
	k := func(keys ...string) []string { return keys }
	if *p.Rate < 0 || math.IsNaN(*p.Rate) {
		bad(k("rate"), "rate: %v must not be negative", *p.Rate)
	}
	if *p.Burst < 1 {
		bad(k("burst"), "burst: %d must be at least 1", *p.Burst)
	}
	if *p.IOBytesPerSecond < 0 {
		bad(k("io_bytes_per_second"), "io_bytes_per_second: %d must not be negative", *p.IOBytesPerSecond)
	}
	if p.MaxWait.Duration < p.Debounce.Duration {
		bad(k("max_wait", "debounce"), "max_wait: %s is shorter than debounce %s", p.MaxWait.Duration, p.Debounce.Duration)
	}
	if p.BackoffBase.Duration <= 0 || p.BackoffMax.Duration < p.BackoffBase.Duration {
		bad(k("backoff_base", "backoff_max"), "backoff_base/backoff_max: need 0 < backoff_base (%s) <= backoff_max (%s)", p.BackoffBase.Duration, p.BackoffMax.Duration)
	}
	return problems
}

func checkTriggers(t TriggersConfig) (problems []valueProblem) {
	bad := func(keys []string, format string, a ...any) {
		problems = append(problems, valueProblem{keys, fmt.Sprintf(format, a...)})
	}
	k := func(keys ...string) []string { return keys }
	if *t.Growth.MinBytes < 0 {
		bad(k("growth.min_bytes"), "growth.min_bytes: %d must not be negative", *t.Growth.MinBytes)
	}
	if *t.Growth.MinRatio < 0 || math.IsNaN(*t.Growth.MinRatio) {
		bad(k("growth.min_ratio"), "growth.min_ratio: %v must not be negative", *t.Growth.MinRatio)
	}
	checkWater := func(name string, high, low float64) {
		if !(low > 0 && low < high && high <= 100) {
			bad(k(name+".low_percent", name+".high_percent"), "%s: need 0 < low_percent (%v) < high_percent (%v) <= 100", name, low, high)
		}
	}
	checkWater("disk", *t.Disk.HighPercent, *t.Disk.LowPercent)
	checkWater("redis_memory", *t.RedisMemory.HighPercent, *t.RedisMemory.LowPercent)
	if t.Disk.Interval.Duration < 100*time.Millisecond {
		bad(k("disk.interval"), "disk.interval: %s is too short (at least 100ms)", t.Disk.Interval.Duration)
	}
	if t.RedisMemory.Interval.Duration < 100*time.Millisecond {
		bad(k("redis_memory.interval"), "redis_memory.interval: %s is too short (at least 100ms)", t.RedisMemory.Interval.Duration)
	}
	if d := t.Retention.Interval.Duration; d != 0 && d < 100*time.Millisecond {
		bad(k("retention.interval"), "retention.interval: %s is too short (at least 100ms, or \"0s\" to turn it off)", d)
	}
	if r := *t.Retention.MinReclaimableRatio; !(r >= 0 && r <= 1) {
		bad(k("retention.min_reclaimable_ratio"), "retention.min_reclaimable_ratio: %v must be from 0 to 1", r)
	}
	if *t.Retention.MinReclaimableBytes < 0 {
		bad(k("retention.min_reclaimable_bytes"), "retention.min_reclaimable_bytes: %d must not be negative", *t.Retention.MinReclaimableBytes)
	}
	if d := t.Timer.Interval.Duration; d != 0 && d < time.Second {
		bad(k("timer.interval"), "timer.interval: %s is too short (at least 1s, or \"0s\" to turn it off)", d)
	}
	return problems
}

// retentionWarnings says why the policy of t cannot keep its retention:
// every trigger that could compact it switched off, or a cooldown or rate
// too slow for its max_age_seconds.
func retentionWarnings(c *Config, t TargetConfig) []string {
	if t.Retention.IsZero() || t.Backend == backends.KindMemory {
		return nil
	}
	var out []string
	tr := t.Triggers
	retOn := tr.Retention.Interval.Duration > 0
	timerOn := tr.Timer.Interval.Duration > 0
	// The growth trigger watches every file target; it has no off switch
	// (min_bytes = 0 and min_ratio = 0 make it fire on any growth).
	growthOn := t.Backend == backends.KindJSON || t.Backend == backends.KindRotating
	if !retOn && !timerOn && !growthOn {
		out = append(out, "retention cannot be kept: the retention and timer triggers are off and nothing else compacts this target routinely")
	} else if !retOn && !timerOn {
		out = append(out, "retention cannot be kept: the retention and timer triggers are off; only growth compacts this target, and an idle target keeps its expired records")
	}
	ma := t.Retention.MaxAgeSeconds
	if ma == nil || *ma <= 0 {
		return out
	}
	limit := time.Duration(*ma * float64(time.Second))
	if cd := t.Policy.Cooldown.Duration; cd > limit {
		out = append(out, fmt.Sprintf("retention cannot be kept: cooldown %s is longer than max_age_seconds (%gs): records outlive their limit by up to the cooldown", cd, *ma))
	}
	if r := *t.Policy.Rate; r > 0 {
		// Every target with an age limit needs a compaction at least once
		// per its max_age_seconds; the shared bucket refills at rate/h.
		need := 0.0
		for _, o := range c.Targets {
			if o.Retention.MaxAgeSeconds != nil && *o.Retention.MaxAgeSeconds > 0 && o.Backend != backends.KindMemory {
				need += 3600 / *o.Retention.MaxAgeSeconds
			}
		}
		if need > r {
			out = append(out, fmt.Sprintf("retention cannot be kept: the targets' age limits need about %.0f compactions per hour, more than rate = %g", need, r))
		}
	}
	if rs := tr.Retention.Interval.Duration; retOn && rs > limit {
		out = append(out, fmt.Sprintf("the retention interval %s is longer than max_age_seconds (%gs): estimates are too old to act on", rs, *ma))
	}
	return out
}
