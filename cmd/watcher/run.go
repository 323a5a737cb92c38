package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"reflect"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/executor"
	"github.com/papyra/watcher/policy"
	"github.com/papyra/watcher/snapshot"
	"github.com/papyra/watcher/triggers"
)

const runAbout = `Runs the daemon: triggers, policy and compactions of every target of the
config file (default ./config.toml) until SIGINT or SIGTERM; SIGHUP reloads
the file. Exit 2 when the file is invalid, 1 when the daemon cannot start
or stops with an error.
` + envUsage

// runDaemon is `watcher run`: triggers → policy → executor → backends until
// SIGINT/SIGTERM; SIGHUP reloads the config.
func runDaemon(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("run", "watcher run [--config FILE]", runAbout, stderr)
	configPath := fs.String("config", "config.toml", "config file")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return strayArgument(fs, fs.Arg(0), stderr)
	}
	cfg, warnings, err := LoadConfig(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "invalid config: %v\n", err)
		return exitBadConfig
	}
	log := newLogger(cfg.Watcher, stderr)
	for _, w := range warnings {
		log.Warn("config: " + w)
	}
	d, err := newDaemon(cfg, warnings, log)
	if err != nil {
		log.Error("cannot start", "error", err)
		return exitFailure
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if err := d.run(ctx, *configPath, hup); err != nil {
		log.Error("stopped with an error", "error", err)
		return exitFailure
	}
	return exitOK
}

// daemon is the running pipeline and what it needs for reloads and status.
type daemon struct {
	log     *slog.Logger
	started time.Time
	metrics *executor.Metrics
	ex      *executor.Executor
	engine  *policy.Engine
	diag    *diagnosis

	growth   *triggers.Growth
	disk     *triggers.Disk
	timer    *triggers.Timer
	ret      *triggers.Retention
	redisMem *triggers.RedisMemory
	nats     *triggers.NATS
	snaps    *snapshot.Manager

	ready atomic.Bool

	mu       sync.Mutex
	cfg      *Config
	warnings []string
	open     map[string]openTarget // by target name
}

// openTarget is a target's config and its open backend, kept to tell on a
// reload whether the backend must be reopened.
type openTarget struct {
	cfg     TargetConfig
	backend backends.Backend
	est     backends.Estimator // nil for memory targets
}

func newDaemon(cfg *Config, warnings []string, log *slog.Logger) (*daemon, error) {
	if err := os.MkdirAll(cfg.Watcher.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state_dir: %w", err)
	}
	d := &daemon{log: log, started: time.Now(), cfg: cfg, warnings: warnings,
		open: map[string]openTarget{}, metrics: executor.NewMetrics(cfg.Watcher.Node)}
	d.metrics.SetBuild(buildVersion())
	d.diag = newDiagnosis(d.metrics, log)
	snaps, err := snapshot.Open(cfg.Watcher.StateDir, log)
	if err != nil {
		return nil, fmt.Errorf("backup snapshots: %w", err)
	}
	d.snaps = snaps
	d.metrics.SetSnapshotUsage(d.snapshotUsage)
	d.ex = executor.New(executor.Options{StateDir: cfg.Watcher.StateDir, Node: cfg.Watcher.Node,
		Timeout: cfg.Watcher.CompactionTimeout.Duration, LockTimeout: cfg.Watcher.LockTimeout.Duration,
		Logger: log})
	if err := d.openTargets(cfg); err != nil {
		return nil, err
	}
	d.engine = policy.New(policyConfig(cfg), d.ex, log)
	d.engine.SetObserver(policyObserver{d.metrics})
	tts := d.triggerTargets(cfg)
	d.growth = triggers.NewGrowth(tts, log)
	d.disk = triggers.NewDisk(tts, log)
	d.timer = triggers.NewTimer(tts, log)
	d.ret = triggers.NewRetention(tts, log)
	d.redisMem = triggers.NewRedisMemory(tts, log)
	if cfg.NATS.URL != "" {
		n, err := triggers.NewNATS(natsConfig(cfg), tts, log)
		if err != nil {
			return nil, fmt.Errorf("nats: %w", err)
		}
		d.nats = n
		n.SetSnapshotter(d)
		n.SetStatus(func(ctx context.Context) any { return d.status(ctx) })
	}
	d.metrics.SetDiskRatios(d.disk.UsedRatios)
	d.metrics.SetRedisRatios(d.redisMem.Ratios)
	d.metrics.SetRetentionGauges(d.retentionGauges)
	d.disk.SetEstimates(d.ret.Estimates)

	d.ex.Subscribe(d.metrics.ObserveReport)
	d.ex.Subscribe(d.diag.observe)
	for _, s := range d.sources() {
		d.ex.Subscribe(s.Observe)
	}
	if d.nats != nil {
		d.ex.Subscribe(d.nats.Publish)
	}
	return d, nil
}

// sources are the running triggers.
func (d *daemon) sources() []triggers.Source {
	s := []triggers.Source{d.growth, d.disk, d.timer, d.ret, d.redisMem}
	if d.nats != nil {
		s = append(s, d.nats)
	}
	return s
}

// openTargets opens the backend of every target whose config changed (all
// of them at start), keeps the others, and hands the executor the new set.
// Backends of removed or changed targets are closed by the executor once
// idle.
func (d *daemon) openTargets(cfg *Config) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	next := map[string]openTarget{}
	var targets []executor.Target
	for _, t := range cfg.Targets {
		if old, ok := d.open[t.Name]; ok && reflect.DeepEqual(backendKey(old.cfg), backendKey(t)) {
			next[t.Name] = openTarget{cfg: t, backend: old.backend, est: old.est}
		} else {
			b, err := openBackend(cfg, t)
			if err != nil {
				for name, o := range next {
					if d.open[name].backend != o.backend {
						o.backend.Close()
					}
				}
				return fmt.Errorf("target %q: %w", t.Name, err)
			}
			next[t.Name] = openTarget{cfg: t, backend: b, est: backends.NewEstimator(b)}
		}
		targets = append(targets, executorTarget(t, next[t.Name].backend))
		d.metrics.InitTarget(t.Name, t.Backend)
	}
	for name := range d.open {
		if _, ok := next[name]; !ok {
			d.metrics.ForgetTarget(name)
			if d.diag != nil {
				d.diag.forget(name)
			}
		}
	}
	d.open = next
	d.ex.SetTargets(targets)
	return nil
}

// backendKey is the part of a target's config that its backend is built
// from: a change in it reopens the backend.
func backendKey(t TargetConfig) TargetConfig {
	return TargetConfig{Name: t.Name, Backend: t.Backend, Path: t.Path, MaxBytes: t.MaxBytes,
		MaxFiles: t.MaxFiles, FollowSymlinks: t.FollowSymlinks, Method: t.Method, URL: t.URL, Prefix: t.Prefix,
		SystemID: t.SystemID, ApproxTrim: t.ApproxTrim, TrimUnacked: t.TrimUnacked}
}

func (d *daemon) triggerTargets(cfg *Config) []triggers.Target {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]triggers.Target, 0, len(cfg.Targets))
	for _, t := range cfg.Targets {
		tt := triggerTarget(t)
		tt.Estimator = d.open[t.Name].est
		out = append(out, tt)
	}
	return out
}

// retentionGauges are the values of the retention metrics, from the
// retention trigger's last estimates.
func (d *daemon) retentionGauges() executor.RetentionGauges {
	g := executor.RetentionGauges{ReclaimableBytes: map[string]float64{}, ReclaimableRecords: map[string]float64{},
		OldestAgeSeconds: map[string]float64{}, MaxAgeSeconds: map[string]float64{}}
	now := time.Now()
	for name, e := range d.ret.Estimates() {
		g.ReclaimableBytes[name] = float64(e.ReclaimableBytes)
		g.ReclaimableRecords[name] = float64(e.ReclaimableRecords)
		g.OldestAgeSeconds[name] = e.OldestAge(now).Seconds()
	}
	for _, t := range d.config().Targets {
		if ma := t.Retention.MaxAgeSeconds; ma != nil {
			g.MaxAgeSeconds[t.Name] = *ma
		}
	}
	return g
}

// policyConfig is the policy engine's view of the config.
func policyConfig(cfg *Config) policy.Config {
	pc := policy.Config{MaxConcurrent: *cfg.Policy.MaxConcurrent, Rate: *cfg.Policy.Rate,
		Burst: *cfg.Policy.Burst, Targets: map[string]policy.TargetSettings{}}
	for _, t := range cfg.Targets {
		pc.Targets[t.Name] = policy.TargetSettings{Debounce: t.Policy.Debounce.Duration,
			MaxWait: t.Policy.MaxWait.Duration, Cooldown: t.Policy.Cooldown.Duration,
			BackoffBase: t.Policy.BackoffBase.Duration, BackoffMax: t.Policy.BackoffMax.Duration}
	}
	return pc
}

// natsConfig is the NATS trigger's view of the config; the micro service
// announces this binary's version (buildVersion).
func natsConfig(cfg *Config) triggers.NATSConfig {
	n := cfg.NATS
	ver, _ := buildVersion()
	return triggers.NATSConfig{URL: n.URL, SubjectPrefix: n.SubjectPrefix, Node: cfg.Watcher.Node,
		User: n.User, Password: n.Password, Token: n.Token, CredsFile: n.CredsFile,
		NKeySeedFile: n.NKeySeedFile, TLSCA: n.TLSCA, TLSCert: n.TLSCert, TLSKey: n.TLSKey,
		MaxBodyBytes: n.MaxBodyBytes, Version: ver}
}

// run starts everything, serves until ctx is done, and shuts down
// gracefully.
func (d *daemon) run(ctx context.Context, configPath string, hup <-chan os.Signal) error {
	// Interrupted compactions are completed or rolled back first.
	if err := d.ex.Recover(ctx); err != nil {
		d.log.Error("recovering interrupted compactions", "error", err)
	}

	var srv *http.Server
	if addr := *d.config().Watcher.HTTPListen; addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("http_listen %s: %w", addr, err)
		}
		srv = &http.Server{Handler: d.handler(), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		d.log.Info("serving /metrics /healthz /readyz /status", "addr", ln.Addr().String())
	}

	engineCtx, stopEngine := context.WithCancel(context.Background())
	defer stopEngine()
	engineDone := make(chan error, 1)
	go func() { engineDone <- d.engine.Run(engineCtx) }()

	trigCtx, stopTriggers := context.WithCancel(context.Background())
	var trigWG sync.WaitGroup
	emit := d.engine.Signal
	for _, s := range d.sources() {
		trigWG.Add(1)
		go func() {
			defer trigWG.Done()
			if err := s.Run(trigCtx, emit); err != nil && !errors.Is(err, context.Canceled) {
				d.log.Error("trigger stopped", "trigger", fmt.Sprintf("%T", s), "error", err)
			}
		}()
	}
	stopStats := d.refreshSizes(trigCtx)
	stopNATSState := d.followNATS(trigCtx)
	trigWG.Add(1)
	go func() {
		defer trigWG.Done()
		d.snaps.Run(trigCtx, snapshotExpiryEvery)
	}()
	// Ready once growth is watched and measured: from then on an append is
	// seen.
	select {
	case <-d.growth.Ready():
	case <-ctx.Done():
	}
	d.ready.Store(true)
	cfg := d.config()
	ver, rev := buildVersion()
	d.log.Info("watcher running", "node", cfg.Watcher.Node, "targets", len(cfg.Targets),
		"config", cfg.Path, "version", ver, "revision", rev)

loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-hup:
			d.reload(configPath)
		}
	}

	d.log.Info("stopping: no new compactions; waiting for running ones", "grace", cfg.Watcher.ShutdownGrace.Duration)
	d.ready.Store(false)
	stopTriggers()
	trigWG.Wait()
	stopStats()
	stopNATSState()
	graceCtx, cancel := context.WithTimeout(context.Background(), d.config().Watcher.ShutdownGrace.Duration)
	if err := d.engine.Shutdown(graceCtx); err != nil {
		d.log.Warn("running compaction abandoned at the end of the grace period; the old content is intact", "error", err)
	}
	cancel()
	stopEngine()
	<-engineDone
	if srv != nil {
		sctx, c := context.WithTimeout(context.Background(), 2*time.Second)
		srv.Shutdown(sctx)
		c()
	}
	d.mu.Lock()
	for _, o := range d.open {
		o.backend.Close()
	}
	d.mu.Unlock()
	d.log.Info("stopped")
	return nil
}

func (d *daemon) config() *Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}

// reload re-reads the config. Any error keeps the old config running.
func (d *daemon) reload(path string) {
	cfg, warnings, err := LoadConfig(path)
	if err != nil {
		d.log.Error("reload refused; keeping the running config", "error", err)
		return
	}
	old := d.config()
	if !reflect.DeepEqual(old.Watcher, cfg.Watcher) || !reflect.DeepEqual(old.NATS, cfg.NATS) {
		d.log.Warn("reload: changes to [watcher] and [nats] take effect at the next restart")
		cfg.Watcher, cfg.NATS = old.Watcher, old.NATS
	}
	if err := d.openTargets(cfg); err != nil {
		d.log.Error("reload refused; keeping the running config", "error", err)
		return
	}
	for _, w := range warnings {
		d.log.Warn("config: " + w)
	}
	d.mu.Lock()
	d.cfg, d.warnings = cfg, warnings
	d.mu.Unlock()
	d.engine.Update(policyConfig(cfg))
	tts := d.triggerTargets(cfg)
	for _, s := range d.sources() {
		s.SetTargets(tts)
	}
	d.log.Info("config reloaded", "targets", len(cfg.Targets))
}

// policyObserver feeds the policy engine's events to the metrics.
type policyObserver struct{ m *executor.Metrics }

func (o policyObserver) Triggered(kind string)           { o.m.Triggered(kind) }
func (o policyObserver) Coalesced(target string)         { o.m.Coalesced(target) }
func (o policyObserver) RateLimited()                    { o.m.RateLimited() }
func (o policyObserver) Stuck(target string, stuck bool) { o.m.SetStuck(target, stuck) }

// refreshSizes keeps the target_bytes gauge current (a Stat per target
// every 15 s: a few syscalls).
func (d *daemon) refreshSizes(ctx context.Context) (stop func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(15 * time.Second)
		defer t.Stop()
		for {
			d.statAll(ctx)
			d.updateDiagnosis()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() { <-done }
}

// followNATS keeps the nats_connected gauge equal to the connection state,
// set at every change (connect, disconnect, reconnect, close) rather than
// sampled. Without NATS it does nothing.
func (d *daemon) followNATS(ctx context.Context) (stop func()) {
	if d.nats == nil {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			connected, changed := d.nats.Watch()
			d.metrics.SetNATSConnected(connected)
			select {
			case <-ctx.Done():
				return
			case <-changed:
			}
		}
	}()
	return func() { <-done }
}

func (d *daemon) statAll(ctx context.Context) map[string]int64 {
	d.mu.Lock()
	open := make(map[string]backends.Backend, len(d.open))
	for n, o := range d.open {
		open[n] = o.backend
	}
	d.mu.Unlock()
	sizes := make(map[string]int64, len(open))
	for name, b := range open {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := b.Stat(sctx)
		cancel()
		if err != nil {
			sizes[name] = -1
			continue
		}
		sizes[name] = st.Bytes
		if st.Bytes >= 0 {
			d.metrics.SetTargetBytes(name, st.Bytes)
		}
	}
	return sizes
}
