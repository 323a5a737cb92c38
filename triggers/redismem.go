package triggers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/redis"
	"github.com/papyra/watcher/policy"
)

// Defaults of RedisMemorySettings, used where a setting is zero.
const (
	redisMemDefaultInterval = 10 * time.Second
	redisMemDefaultHigh     = 80
	redisMemDefaultLow      = 70
	// redisMemMaxFetch bounds one INFO call.
	redisMemMaxFetch = 5 * time.Second
)

// RedisMemoryOptions tunes a RedisMemory trigger. The zero value is the
// production setting.
type RedisMemoryOptions struct {
	// Info returns the text of INFO memory of the server at url. nil uses
	// go-redis, with one client per server.
	Info func(ctx context.Context, url string) (string, error)
}

// RedisServerState is the state of one Redis server that holds redis
// targets, for /readyz and /status.
type RedisServerState struct {
	// Addr is the server identity: host:port (or the socket path).
	Addr string `json:"addr"`
	// Targets are the redis targets on the server, in config order.
	Targets []string `json:"targets"`
	// Connected is true when the last INFO call got an answer.
	Connected bool `json:"connected"`
	// Err is the last error (unreachable, or an INFO reply that could not
	// be read); empty when the last reading succeeded.
	Err string `json:"error,omitempty"`
	// Ratio is used_memory / maxmemory (or / total_system_memory when
	// maxmemory is 0) at the last successful reading; 0 before one.
	Ratio float64 `json:"ratio"`
	// UnderPressure is true while any of its targets is under pressure.
	UnderPressure bool `json:"under_pressure"`
}

// RedisMemory is the Redis memory trigger. Targets are grouped by server
// (host:port of their url; the database number does not matter), and every
// interval one INFO memory per server gives the ratio used_memory /
// maxmemory, or used_memory / total_system_memory when maxmemory is 0.
//
// Pressure uses hysteresis per target (targets may override the
// thresholds): it begins when the ratio reaches HighPercent and ends only
// when it falls below LowPercent. While under pressure, an urgent
// policy.KindRedisMemory signal naming the server's targets under pressure
// is emitted at every reading.
//
// A server that cannot be reached is retried every interval; its state
// changes (reachable → unreachable → reachable, or an INFO reply that cannot
// be read) are logged once each, never per reading. Its targets keep their
// pressure state and no signal is emitted until it answers again.
//
// Each server is polled by its own goroutine, so a slow server never delays
// another.
type RedisMemory struct {
	logger *slog.Logger
	info   func(ctx context.Context, url string) (string, error)
	own    bool // info is ours: close clients on exit

	mu      sync.Mutex
	targets []Target
	servers map[string]*redisMemServer
	wake    chan struct{}
	clients map[string]*goredis.Client // by url, for the default info
}

// redisMemServer is what RedisMemory keeps per server.
type redisMemServer struct {
	addr     string
	url      string // used to connect: the first target's
	targets  []string
	settings map[string]RedisMemorySettings
	interval time.Duration

	pressured map[string]bool
	ratio     float64
	hasRatio  bool
	state     string // "", "ok", "unreachable", "invalid"
	err       string
}

// RedisMemory is a Source.
var _ Source = (*RedisMemory)(nil)

// NewRedisMemory returns the trigger for the redis targets among targets
// (others are ignored). Options are optional; at most the first is used.
func NewRedisMemory(targets []Target, logger *slog.Logger, opts ...RedisMemoryOptions) *RedisMemory {
	if logger == nil {
		logger = slog.Default()
	}
	var o RedisMemoryOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	m := &RedisMemory{
		logger:  logger.With("trigger", policy.KindRedisMemory),
		info:    o.Info,
		servers: make(map[string]*redisMemServer),
		wake:    make(chan struct{}, 1),
		clients: make(map[string]*goredis.Client),
	}
	if m.info == nil {
		m.info, m.own = m.redisInfo, true
	}
	m.SetTargets(targets)
	return m
}

// RedisServerAddr returns the server identity of a redis url: host:port
// (the default port filled in) or, for unix://, the socket path. The
// database, user and password do not matter.
func RedisServerAddr(rawURL string) (string, error) {
	opts, _, err := redis.ParseURL(rawURL)
	if err != nil {
		return "", err
	}
	return opts.Addr, nil
}

// SetTargets replaces the target list. Servers that appear are polled at
// once; servers no target uses any more stop being polled. The pressure
// state of a target that stays on its server is kept.
func (m *RedisMemory) SetTargets(targets []Target) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.targets = nil
	next := make(map[string]*redisMemServer)
	for _, t := range targets {
		if t.Backend != backends.KindRedis {
			continue
		}
		addr, err := RedisServerAddr(t.RedisURL)
		if err != nil {
			m.logger.Error("redis target ignored by the memory trigger", "target", t.Name, "err", err)
			continue
		}
		m.targets = append(m.targets, t)
		s := next[addr]
		if s == nil {
			s = m.servers[addr]
			if s == nil {
				s = &redisMemServer{addr: addr, pressured: make(map[string]bool)}
			}
			s.url, s.targets, s.interval = t.RedisURL, nil, 0
			s.settings = make(map[string]RedisMemorySettings)
			next[addr] = s
		}
		st := t.RedisMemory
		if st.Interval <= 0 {
			st.Interval = redisMemDefaultInterval
		}
		if st.HighPercent <= 0 {
			st.HighPercent = redisMemDefaultHigh
		}
		if st.LowPercent <= 0 || st.LowPercent > st.HighPercent {
			st.LowPercent = min(redisMemDefaultLow, st.HighPercent)
		}
		s.targets = append(s.targets, t.Name)
		s.settings[t.Name] = st
		if s.interval == 0 || st.Interval < s.interval {
			s.interval = st.Interval
		}
	}
	for _, s := range next {
		for name := range s.pressured {
			if _, ok := s.settings[name]; !ok {
				delete(s.pressured, name)
			}
		}
	}
	m.servers = next
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// Observe does nothing: Redis memory is read from the server.
func (m *RedisMemory) Observe(backends.Report) {}

// Run polls every server until ctx is done.
func (m *RedisMemory) Run(ctx context.Context, emit Emit) error {
	var wg sync.WaitGroup
	running := make(map[string]context.CancelFunc)
	reconcile := func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		for addr := range m.servers {
			if _, ok := running[addr]; ok {
				continue
			}
			sctx, cancel := context.WithCancel(ctx)
			running[addr] = cancel
			wg.Add(1)
			go func() {
				defer wg.Done()
				m.poll(sctx, addr, emit)
			}()
		}
		for addr, cancel := range running {
			if _, ok := m.servers[addr]; !ok {
				cancel()
				delete(running, addr)
			}
		}
		m.closeUnusedClients()
	}
	reconcile()
	for {
		select {
		case <-ctx.Done():
			for _, cancel := range running {
				cancel()
			}
			wg.Wait()
			m.mu.Lock()
			for u, c := range m.clients {
				c.Close()
				delete(m.clients, u)
			}
			m.mu.Unlock()
			return nil
		case <-m.wake:
			reconcile()
		}
	}
}

// poll reads one server every interval until ctx is done or the server is
// no longer used.
func (m *RedisMemory) poll(ctx context.Context, addr string, emit Emit) {
	for {
		interval, ok := m.read(ctx, addr, emit)
		if !ok {
			return
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// read takes one reading of the server at addr, updates its state and
// emits a signal when targets are under pressure. It returns the interval
// to the next reading, and false when the server is gone.
func (m *RedisMemory) read(ctx context.Context, addr string, emit Emit) (time.Duration, bool) {
	m.mu.Lock()
	s := m.servers[addr]
	if s == nil {
		m.mu.Unlock()
		return 0, false
	}
	url, interval := s.url, s.interval
	m.mu.Unlock()

	fctx, cancel := context.WithTimeout(ctx, min(interval, redisMemMaxFetch))
	text, err := m.info(fctx, url)
	cancel()
	if ctx.Err() != nil {
		return 0, false
	}
	state := "ok"
	var ratio float64
	if err != nil {
		state = "unreachable"
	} else if ratio, err = ParseRedisMemoryInfo(text); err != nil {
		state = "invalid"
	}
	now := time.Now()

	m.mu.Lock()
	if m.servers[addr] != s {
		m.mu.Unlock()
		return 0, false
	}
	prev := s.state
	s.state = state
	redacted := redis.RedactURL(url)
	switch {
	case state == prev:
	case state == "unreachable":
		m.logger.Warn("redis server unreachable; retrying every interval", "server", addr, "url", redacted, "targets", s.targets, "err", redactErr(err, url))
	case state == "invalid":
		m.logger.Error("redis INFO memory cannot be read", "server", addr, "targets", s.targets, "err", err)
	case prev == "":
		m.logger.Debug("redis server connected", "server", addr)
	default:
		m.logger.Info("redis server reachable again", "server", addr, "targets", s.targets)
	}
	if err != nil {
		s.err = redactErr(err, url)
		s.hasRatio = false
		m.mu.Unlock()
		return interval, true
	}
	s.err, s.ratio, s.hasRatio = "", ratio, true
	pct := ratio * 100
	var hot []string
	for _, name := range s.targets {
		st := s.settings[name]
		was := s.pressured[name]
		switch {
		case pct >= st.HighPercent:
			s.pressured[name] = true
		case pct < st.LowPercent:
			s.pressured[name] = false
		}
		if s.pressured[name] != was {
			if s.pressured[name] {
				m.logger.Warn("redis memory pressure", "server", addr, "target", name, "used_percent", pct, "high_percent", st.HighPercent)
			} else {
				m.logger.Info("redis memory pressure over", "server", addr, "target", name, "used_percent", pct, "low_percent", st.LowPercent)
			}
		}
		if s.pressured[name] {
			hot = append(hot, name)
		}
	}
	m.mu.Unlock()
	if len(hot) > 0 {
		emit(policy.Signal{
			Kind:    policy.KindRedisMemory,
			Targets: hot,
			Urgent:  true,
			Reason:  fmt.Sprintf("redis %s used memory at %.1f%%", addr, pct),
			At:      now,
		})
	}
	return interval, true
}

// redactErr is err's text with any password of url removed.
func redactErr(err error, url string) string {
	if err == nil {
		return ""
	}
	msg := err.Error()
	if opts, perr := goredis.ParseURL(url); perr == nil && opts.Password != "" {
		msg = strings.ReplaceAll(msg, opts.Password, "xxxxx")
	}
	return msg
}

// Ratios returns the last used-memory ratio of every redis target whose
// server answered its last reading (the metric redis_used_memory_ratio).
func (m *RedisMemory) Ratios() map[string]float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]float64)
	for _, s := range m.servers {
		if !s.hasRatio {
			continue
		}
		for _, name := range s.targets {
			out[name] = s.ratio
		}
	}
	return out
}

// State returns the state of every server, sorted by address.
func (m *RedisMemory) State() []RedisServerState {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]RedisServerState, 0, len(m.servers))
	for _, s := range m.servers {
		st := RedisServerState{
			Addr:      s.addr,
			Targets:   append([]string(nil), s.targets...),
			Connected: s.state == "ok" || s.state == "invalid",
			Err:       s.err,
			Ratio:     s.ratio,
		}
		if s.state == "" {
			st.Err = "not read yet"
		}
		for _, name := range s.targets {
			st.UnderPressure = st.UnderPressure || s.pressured[name]
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return out
}

// redisInfo is the default Info: INFO memory over a cached client.
func (m *RedisMemory) redisInfo(ctx context.Context, url string) (string, error) {
	m.mu.Lock()
	c := m.clients[url]
	if c == nil {
		opts, _, err := redis.ParseURL(url)
		if err != nil {
			m.mu.Unlock()
			return "", err
		}
		opts.MaxRetries = -1
		opts.DialerRetries = 1
		opts.PoolSize = 1
		opts.DialTimeout = redisMemMaxFetch
		opts.ContextTimeoutEnabled = true
		opts.DisableIdentity = true
		opts.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
		c = goredis.NewClient(opts)
		m.clients[url] = c
	}
	m.mu.Unlock()
	return c.Info(ctx, "memory").Result()
}

// closeUnusedClients closes the clients of urls no server uses. m.mu is
// held.
func (m *RedisMemory) closeUnusedClients() {
	used := make(map[string]bool)
	for _, s := range m.servers {
		used[s.url] = true
	}
	for u, c := range m.clients {
		if !used[u] {
			c.Close()
			delete(m.clients, u)
		}
	}
}

// ErrRedisInfo is wrapped by every error ParseRedisMemoryInfo returns.
var ErrRedisInfo = errors.New("invalid INFO memory reply")

// ParseRedisMemoryInfo reads the text of INFO memory and returns
// used_memory / maxmemory, or used_memory / total_system_memory when
// maxmemory is 0. A missing or malformed field is an error naming it.
func ParseRedisMemoryInfo(text string) (float64, error) {
	fields := make(map[string]string)
	for line := range strings.SplitSeq(text, "\n") {
		line = strings.TrimRight(line, "\r")
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		fields[k] = v
	}
	num := func(name string) (uint64, error) {
		v, ok := fields[name]
		if !ok {
			return 0, fmt.Errorf("%w: field %s missing", ErrRedisInfo, name)
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%w: field %s is not a byte count: %q", ErrRedisInfo, name, v)
		}
		return n, nil
	}
	used, err := num("used_memory")
	if err != nil {
		return 0, err
	}
	limit, err := num("maxmemory")
	if err != nil {
		return 0, err
	}
	if limit == 0 {
		if limit, err = num("total_system_memory"); err != nil {
			return 0, fmt.Errorf("maxmemory is 0: %w", err)
		}
		if limit == 0 {
			return 0, fmt.Errorf("%w: maxmemory and total_system_memory are both 0", ErrRedisInfo)
		}
	}
	return float64(used) / float64(limit), nil
}
