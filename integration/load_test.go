package integration

// Load: the daemon (built binary) with 1,000 json targets and a Papyra-like
// load of 10,000 appended records per second spread over them, for 10 s
// (WATCHER_LOAD_SECONDS sets the duration, e.g. 60). The daemon's memory
// stays bounded, the compactions it starts stay within what the policy
// allows, it keeps answering /healthz, loses and duplicates nothing, and
// stops cleanly on SIGTERM. And an in-process pipeline (engine, executor,
// every trigger) started and stopped leaks no goroutine (goleak).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/jsonfile"
	"github.com/papyra/watcher/executor"
	"github.com/papyra/watcher/internal/testutil"
	"github.com/papyra/watcher/policy"
	"github.com/papyra/watcher/triggers"
)

const (
	loadTargets    = 1000
	loadDirs       = 10
	loadPerSecond  = 10000
	loadMaxRecords = 50
	loadRSSLimitMB = 150
	// The policy under load: one routine compaction per second over all
	// targets (rate 3600/h), a burst of 20.
	loadRate  = 3600.0
	loadBurst = 20
)

// vmRSS returns the resident set size of pid in kB (VmRSS of
// /proc/<pid>/status).
func vmRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

func loadPath(dir string, i int) string {
	return filepath.Join(dir, "data", fmt.Sprintf("d%02d", i%loadDirs), fmt.Sprintf("t%04d.ndjson", i))
}

func TestLoadDaemon1000Targets(t *testing.T) {
	seconds := envInt(t, "WATCHER_LOAD_SECONDS", 10)
	dir := t.TempDir()
	addr := freeAddr(t)
	var cfg strings.Builder
	fmt.Fprintf(&cfg, `[watcher]
state_dir = "state"
http_listen = %q
log_level = "warn"
node = "load-node"

[policy]
debounce = "200ms"
max_wait = "1s"
cooldown = "1s"
max_concurrent = 2
rate = %g
burst = %d
partial_line_grace = "876000h"

[triggers.timer]
interval = "0s"

[triggers.growth]
min_bytes = 4000
min_ratio = 0.1

[triggers.disk]
interval = "5s"
high_percent = 99.9
low_percent = 99.8
predict_horizon = "0s"
`, addr, loadRate, loadBurst)
	for i := range loadTargets {
		p := loadPath(dir, i)
		writeFile(t, p, nil)
		fmt.Fprintf(&cfg, "\n[[target]]\nname = \"t%04d\"\nbackend = \"json\"\npath = %q\n[target.retention]\nmax_records = %d\n", i, p, loadMaxRecords)
	}
	cfgPath := writeConfig(t, dir, cfg.String())
	d := startDaemon(t, cfgPath, addr)
	start := time.Now()
	d.WaitReady(30 * time.Second)
	pid := d.cmd.Process.Pid

	// The load: every 10 ms, a hundredth of a second's records, each one
	// open/append/close on a random target, as Papyra writes.
	var written [loadTargets]atomic.Int64
	var total atomic.Int64
	stop := make(chan struct{})
	loadDone := make(chan error, 1)
	go func() {
		rng := rand.New(rand.NewPCG(1, 2))
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		begin := time.Now()
		var line []byte
		for {
			select {
			case <-stop:
				loadDone <- nil
				return
			case <-tick.C:
			}
			// Catch up to the rate if the machine fell behind.
			due := int64(time.Since(begin).Seconds()*loadPerSecond) - total.Load()
			for range min(due, loadPerSecond/10) {
				i := rng.IntN(loadTargets)
				seq := written[i].Load()
				line = fmt.Appendf(line[:0], `{"kind": "event", "system_id": "local", "actor_address": "local://a/%d", "event_type": "Load", "payload": {"target": %d, "seq": %d}, "timestamp": %d.0}`+"\n",
					i, i, seq, 1795600000+seq)
				f, err := os.OpenFile(loadPath(dir, i), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
				if err == nil {
					_, err = f.Write(line)
					if cerr := f.Close(); err == nil {
						err = cerr
					}
				}
				if err != nil {
					loadDone <- err
					return
				}
				written[i].Add(1)
				total.Add(1)
			}
		}
	}()

	// While it runs: /healthz answers, RSS is sampled.
	var maxRSS int64
	var healthChecks int
	loadStart := time.Now()
	deadline := loadStart.Add(time.Duration(seconds) * time.Second)
	for time.Now().Before(deadline) {
		if d.Exited() {
			t.Fatalf("the daemon exited under load:\n%s", d.Stderr())
		}
		hstart := time.Now()
		code, _, err := d.Get("/healthz")
		if err != nil || code != 200 {
			t.Fatalf("/healthz under load: %d %v", code, err)
		}
		if lat := time.Since(hstart); lat > 2*time.Second {
			t.Errorf("/healthz took %s under load", lat)
		}
		healthChecks++
		rss, err := vmRSS(pid)
		if err != nil {
			t.Fatal(err)
		}
		maxRSS = max(maxRSS, rss)
		time.Sleep(250 * time.Millisecond) // sampling period, not a wait for success
	}
	close(stop)
	if err := <-loadDone; err != nil {
		t.Fatalf("load writer: %v", err)
	}
	loadElapsed := time.Since(loadStart)
	n := total.Load()
	achieved := float64(n) / loadElapsed.Seconds()
	t.Logf("load: %d records in %s (%.0f/s) over %d targets; %d /healthz checks; max RSS %.1f MB",
		n, loadElapsed.Round(time.Millisecond), achieved, loadTargets, healthChecks, float64(maxRSS)/1024)
	if achieved < loadPerSecond/2 {
		t.Errorf("the load reached only %.0f records/s of %d: the test does not load the daemon as it should", achieved, loadPerSecond)
	}
	if maxRSS > loadRSSLimitMB*1024 {
		t.Errorf("daemon RSS reached %.1f MB under load, over the %d MB bound", float64(maxRSS)/1024, loadRSSLimitMB)
	}

	_, body, err := d.Get("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	samples := parseMetrics(body)
	compactions, _ := metricValue(samples, "papyra_compactor_compactions_total", nil)
	growth, _ := metricValue(samples, "papyra_compactor_triggers_total", map[string]string{"kind": "growth"})
	limited, _ := metricValue(samples, "papyra_compactor_rate_limited_total", nil)
	urgent := 0.0
	for _, k := range []string{"disk", "nats"} {
		v, _ := metricValue(samples, "papyra_compactor_compactions_total", map[string]string{"trigger": k})
		urgent += v
	}
	bound := loadRate/3600*elapsed.Seconds() + loadBurst + urgent + 1
	t.Logf("policy: %.0f compactions started in %s (bound %.0f = rate × time + burst + urgent %.0f); %.0f growth signals; rate limited %.0f times",
		compactions, elapsed.Round(time.Millisecond), bound, urgent, growth, limited)
	if compactions > bound {
		t.Errorf("%.0f compactions in %s: more than the policy allows (%.0f)", compactions, elapsed, bound)
	}
	if compactions < 1 || growth <= loadBurst {
		t.Errorf("the load should cause growth signals (%.0f) beyond the burst and some compactions (%.0f)", growth, compactions)
	}
	if limited < 1 {
		t.Errorf("rate_limited_total = %.0f: the token bucket never held a compaction back under load", limited)
	}

	d.Signal(syscall.SIGTERM)
	if code := d.Wait(60 * time.Second); code != 0 {
		t.Fatalf("SIGTERM after load: exit %d\n%s", code, d.Stderr())
	}

	// Nothing lost or duplicated: each target holds its newest records
	// (at least max_records of them) exactly once.
	for i := range loadTargets {
		data := readTarget(t, loadPath(dir, i))
		seen := map[int64]bool{}
		for _, line := range bytes.SplitAfter(data, []byte("\n")) {
			if len(line) == 0 {
				continue
			}
			var rec struct {
				Payload struct {
					Target int   `json:"target"`
					Seq    int64 `json:"seq"`
				} `json:"payload"`
			}
			if json.Unmarshal(line, &rec) != nil || rec.Payload.Target != i || line[len(line)-1] != '\n' {
				t.Fatalf("target %d: bad line %q", i, clip(line))
			}
			if seen[rec.Payload.Seq] {
				t.Fatalf("target %d: record %d twice", i, rec.Payload.Seq)
			}
			seen[rec.Payload.Seq] = true
		}
		w := written[i].Load()
		for s := max(0, w-loadMaxRecords); s < w; s++ {
			if !seen[s] {
				t.Fatalf("target %d: record %d of %d (one of the newest %d) is missing", i, s, w, loadMaxRecords)
			}
		}
	}
	wantNoLeftovers(t, filepath.Join(dir, "data"))
}

// TestLoadInProcessNoGoroutineLeak builds the daemon's pipeline in this
// process (executor, policy engine, growth, disk, timer and NATS triggers
// on an embedded server, 100 json targets), drives compactions through it
// with appends and a NATS request, stops it as `watcher run` does, and
// checks with goleak that no goroutine is left behind.
func TestLoadInProcessNoGoroutineLeak(t *testing.T) {
	ns := testutil.StartNATS(t)
	httpClient.CloseIdleConnections()
	opts := []goleak.Option{goleak.IgnoreCurrent()}

	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil))
	ex := executor.New(executor.Options{StateDir: filepath.Join(dir, "state"), Node: "leak-node", Logger: log})
	const n = 100
	var ets []executor.Target
	var tts []triggers.Target
	pc := policy.Config{MaxConcurrent: 2, Rate: 0, Burst: 1, Targets: map[string]policy.TargetSettings{}}
	paths := make([]string, n)
	var bks []backends.Backend
	for i := range n {
		name := fmt.Sprintf("t%03d", i)
		paths[i] = filepath.Join(dir, "data", name+".ndjson")
		writeFile(t, paths[i], genRecords(0, 20, 1795599000, 20))
		b, err := jsonfile.New(jsonfile.Config{Name: name, Path: paths[i], StateDir: filepath.Join(dir, "state")})
		if err != nil {
			t.Fatal(err)
		}
		bks = append(bks, b)
		ets = append(ets, executor.Target{Name: name, Backend: b, Retention: backends.Retention{MaxRecords: ptrInt64(10)}, PartialLineGrace: time.Hour})
		tts = append(tts, triggers.Target{Name: name, Backend: backends.KindJSON, Files: []string{paths[i]},
			Growth: triggers.GrowthSettings{MinBytes: 500, MinRatio: 0.1},
			Disk:   triggers.DiskSettings{Interval: 100 * time.Millisecond, HighPercent: 99.9, LowPercent: 99.8},
			Timer:  triggers.TimerSettings{Interval: time.Hour}})
		pc.Targets[name] = policy.TargetSettings{Debounce: 20 * time.Millisecond, MaxWait: 100 * time.Millisecond, Cooldown: 10 * time.Millisecond}
	}
	ex.SetTargets(ets)
	var reports atomic.Int64
	ex.Subscribe(func(r backends.Report) {
		if r.Error == "" {
			reports.Add(1)
		}
	})
	engine := policy.New(pc, ex, log)
	nt, err := triggers.NewNATS(triggers.NATSConfig{URL: ns.URL, Node: "leak-node"}, tts, log)
	if err != nil {
		t.Fatal(err)
	}
	growth := triggers.NewGrowth(tts, log)
	sources := []triggers.Source{growth, triggers.NewDisk(tts, log), triggers.NewTimer(tts, log), nt}
	for _, s := range sources {
		ex.Subscribe(s.Observe)
	}
	ex.Subscribe(nt.Publish)

	engineCtx, stopEngine := context.WithCancel(context.Background())
	engineDone := make(chan error, 1)
	go func() { engineDone <- engine.Run(engineCtx) }()
	trigCtx, stopTriggers := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, s := range sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.Run(trigCtx, engine.Signal)
		}()
	}
	for name, ready := range map[string]<-chan struct{}{"NATS": nt.Ready(), "growth": growth.Ready()} {
		select {
		case <-ready:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s trigger not ready", name)
		}
	}
	// Growth on every target, and one NATS request.
	for i := range n {
		appendRecords(t, paths[i], genRecords(20, 20, 1795599500, 40))
	}
	r := runWatcher(t, 30*time.Second, "request", "compact", "--target", "t000", "--nats", ns.URL, "--expect", "1", "--timeout", "20s")
	wantCode(t, r, 0, "watcher request compact")
	eventually(t, 30*time.Second, "compactions of every grown target", func() (bool, string) {
		return reports.Load() >= n, fmt.Sprint(reports.Load(), " reports")
	})

	// Stop as `watcher run` does.
	stopTriggers()
	wg.Wait()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	if err := engine.Shutdown(sctx); err != nil {
		t.Errorf("engine shutdown: %v", err)
	}
	cancel()
	stopEngine()
	<-engineDone
	for _, b := range bks {
		b.Close()
	}
	// VerifyNone retries for a while, for goroutines on their way out.
	goleak.VerifyNone(t, opts...)
}

func ptrInt64(v int64) *int64 { return &v }
