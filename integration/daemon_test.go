package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/papyra/watcher/internal/testutil"
)

// daemonHeader is a config for `watcher run` with a short policy: changes
// are compacted within about a second of their growth passing 10 kB and
// half the size after the last compaction. extraWatcher goes into
// [watcher], extraPolicy into [policy].
func daemonHeader(addr, extraWatcher, extraPolicy string) string {
	return fmt.Sprintf(`[watcher]
state_dir = "state"
http_listen = %q
log_level = "info"
node = "it-node"
%s

[policy]
debounce = "200ms"
max_wait = "1s"
cooldown = "100ms"
rate = 100000
burst = 1000
partial_line_grace = "876000h"
%s

[triggers.timer]
interval = "0s"

[triggers.growth]
min_bytes = 10000
min_ratio = 0.5

[triggers.disk]
interval = "500ms"
high_percent = 99
low_percent = 98
predict_horizon = "0s"
`, addr, extraWatcher, extraPolicy)
}

// jsonTarget is a [[target]] table for a json file under data/ with
// max_records.
func jsonTarget(name, file string, maxRecords int) string {
	return jsonTargetMethod(name, file, maxRecords, "")
}

// jsonTargetMethod is jsonTarget with method set (the default when empty).
func jsonTargetMethod(name, file string, maxRecords int, method string) string {
	m := ""
	if method != "" {
		m = fmt.Sprintf("method = %q\n", method)
	}
	return fmt.Sprintf(`
[[target]]
name = %q
backend = "json"
path = "data/%s"
%s[target.retention]
max_records = %d
`, name, file, m, maxRecords)
}

// appendRecords appends records one line at a time as Papyra's writer does:
// open with O_APPEND, one write, close.
func appendRecords(t testing.TB, path string, data []byte) {
	t.Helper()
	for _, line := range splitLines(data) {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(line); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// status fetches and decodes /status.
func (d *daemonProc) status() (statusDoc, error) {
	code, body, err := d.Get("/status")
	if err != nil {
		return statusDoc{}, err
	}
	if code != 200 {
		return statusDoc{}, fmt.Errorf("/status: %d %s", code, body)
	}
	var doc statusDoc
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		return statusDoc{}, fmt.Errorf("/status is not JSON: %v\n%s", err, body)
	}
	return doc, nil
}

// targetStatus returns the /status entry of target.
func (d *daemonProc) targetStatus(target string) (targetStatus, error) {
	doc, err := d.status()
	if err != nil {
		return targetStatus{}, err
	}
	for _, ts := range doc.Targets {
		if ts.Name == target {
			return ts, nil
		}
	}
	return targetStatus{}, fmt.Errorf("target %q not in /status", target)
}

// waitReport waits until /status shows a last_report for target that
// satisfies ok, and returns it.
func (d *daemonProc) waitReport(timeout time.Duration, target string, ok func(report) bool) report {
	d.t.Helper()
	var rep report
	eventually(d.t, timeout, "last_report of "+target, func() (bool, string) {
		if d.Exited() {
			d.t.Fatalf("watcher run exited\nstderr:\n%s", d.Stderr())
		}
		ts, err := d.targetStatus(target)
		if err != nil {
			return false, err.Error()
		}
		if len(ts.LastReport) == 0 || string(ts.LastReport) == "null" {
			return false, "no last_report yet"
		}
		rep = parseReport(d.t, ts.LastReport)
		return ok(rep), string(ts.LastReport)
	})
	return rep
}

// metricSample is one sample line of the Prometheus text format.
type metricSample struct {
	name   string
	labels map[string]string
	value  float64
}

var sampleRE = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)`)
var labelRE = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)

// parseMetrics parses the samples of a Prometheus text exposition.
func parseMetrics(text string) []metricSample {
	var out []metricSample
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		m := sampleRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		v, err := strconv.ParseFloat(m[4], 64)
		if err != nil {
			continue
		}
		s := metricSample{name: m[1], labels: map[string]string{}, value: v}
		for _, l := range labelRE.FindAllStringSubmatch(m[3], -1) {
			s.labels[l[1]] = l[2]
		}
		out = append(out, s)
	}
	return out
}

// metricValue sums the samples of name whose labels include want.
func metricValue(samples []metricSample, name string, want map[string]string) (float64, bool) {
	var sum float64
	found := false
next:
	for _, s := range samples {
		if s.name != name {
			continue
		}
		for k, v := range want {
			if s.labels[k] != v {
				continue next
			}
		}
		sum += s.value
		found = true
	}
	return sum, found
}

// interfaceMetrics are the metric names users have relied on from the start.
var interfaceMetrics = []string{
	"papyra_compactor_compactions_total",
	"papyra_compactor_compaction_errors_total",
	"papyra_compactor_records_dropped_total",
	"papyra_compactor_bytes_reclaimed_total",
	"papyra_compactor_compaction_duration_seconds",
	"papyra_compactor_triggers_total",
	"papyra_compactor_signals_coalesced_total",
	"papyra_compactor_rate_limited_total",
	"papyra_compactor_target_bytes",
	"papyra_compactor_last_success_timestamp_seconds",
	"papyra_compactor_disk_used_ratio",
	"papyra_compactor_redis_used_memory_ratio",
}

// missingMetrics returns the names of want that have no sample in text
// (a histogram counts by its _count series).
func missingMetrics(text string, want []string) []string {
	have := map[string]bool{}
	for _, s := range parseMetrics(text) {
		have[s.name] = true
		have[strings.TrimSuffix(s.name, "_count")] = true
	}
	var out []string
	for _, n := range want {
		if !have[n] {
			out = append(out, n)
		}
	}
	return out
}

// isSuffixOfLines reports whether got is the last lines of all.
func isSuffixOfLines(got, all []byte) bool {
	return bytes.HasSuffix(all, got) && (len(got) == len(all) || len(got) == 0 || all[len(all)-len(got)-1] == '\n')
}

// TestDaemonGrowth is the daemon's main path: growth past the threshold
// triggers a compaction, seen in /status, /metrics, the log and the file;
// `watcher status` reads it.
func TestDaemonGrowth(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	addr := freeAddr(t)
	path := filepath.Join(dir, "data", "events.ndjson")
	initial := genRecords(0, 20, 1795599000, 90)
	writeFile(t, path, initial)
	cfg := writeConfig(t, dir, daemonHeader(addr, "", "")+jsonTarget("events", "events.ndjson", 100))
	d := startDaemon(t, cfg, addr)
	d.WaitReady(15 * time.Second)

	if code, body, err := d.Get("/healthz"); err != nil || code != 200 {
		t.Fatalf("/healthz: %d %q %v", code, body, err)
	}
	eventually(t, 5*time.Second, "/status shows the target and its size", func() (bool, string) {
		ts, err := d.targetStatus("events")
		if err != nil {
			return false, err.Error()
		}
		return ts.Backend == "json" && ts.SizeBytes == int64(len(initial)),
			fmt.Sprintf("backend %q size %d, want json %d", ts.Backend, ts.SizeBytes, len(initial))
	})
	if ts, _ := d.targetStatus("events"); len(ts.LastReport) != 0 && string(ts.LastReport) != "null" {
		t.Fatalf("a compaction ran before any growth: %s", ts.LastReport)
	}

	// 200 records, about 40 kB: past 10 kB and half the file.
	more := genRecords(20, 200, 1795599500, 90)
	all := append(append([]byte{}, initial...), more...)
	appendRecords(t, path, more)

	rep := d.waitReport(15*time.Second, "events", func(r report) bool { return true })
	if rep.Error != "" || rep.Trigger != "growth" || rep.Backend != "json" || rep.Target != "events" {
		t.Fatalf("last_report: %+v; want a successful growth compaction of events", rep)
	}
	d.WaitLog(5*time.Second, "compaction", "target=events", "trigger=growth")
	eventually(t, 10*time.Second, "the file is compacted to its newest records", func() (bool, string) {
		got := readTarget(t, path)
		n := bytes.Count(got, []byte("\n"))
		if !isSuffixOfLines(got, all) {
			t.Fatalf("the compacted file is not the newest lines of what was written (a record was lost or changed)")
		}
		return n == 100, fmt.Sprintf("%d lines", n)
	})

	// /metrics: every promised name; the compaction counted with its labels.
	eventually(t, 10*time.Second, "/metrics", func() (bool, string) {
		code, body, err := d.Get("/metrics")
		if err != nil || code != 200 {
			return false, fmt.Sprintf("%d %v", code, err)
		}
		var want []string
		for _, n := range interfaceMetrics {
			if n != "papyra_compactor_redis_used_memory_ratio" { // no redis target here; see TestDaemonMetricsWithRedis
				want = append(want, n)
			}
		}
		if miss := missingMetrics(body, want); len(miss) > 0 {
			return false, fmt.Sprintf("missing %v", miss)
		}
		s := parseMetrics(body)
		v, _ := metricValue(s, "papyra_compactor_compactions_total",
			map[string]string{"target": "events", "backend": "json", "trigger": "growth", "result": "success"})
		if v < 1 {
			return false, fmt.Sprintf("compactions_total{target=events,backend=json,trigger=growth,result=success} = %v", v)
		}
		if v, _ := metricValue(s, "papyra_compactor_compaction_errors_total", map[string]string{"target": "events"}); v != 0 {
			t.Errorf("compaction_errors_total{target=events} = %v, want 0", v)
		}
		if v, _ := metricValue(s, "papyra_compactor_triggers_total", map[string]string{"kind": "growth"}); v < 1 {
			return false, fmt.Sprintf("triggers_total{kind=growth} = %v", v)
		}
		if v, _ := metricValue(s, "papyra_compactor_records_dropped_total", map[string]string{"target": "events"}); v < 1 {
			return false, fmt.Sprintf("records_dropped_total{target=events} = %v", v)
		}
		if v, _ := metricValue(s, "papyra_compactor_last_success_timestamp_seconds", map[string]string{"target": "events"}); v < float64(time.Now().Add(-time.Minute).Unix()) {
			return false, fmt.Sprintf("last_success_timestamp_seconds{target=events} = %v", v)
		}
		return true, ""
	})

	// watcher status against the daemon.
	r := runWatcher(t, 15*time.Second, "status", "--addr", addr)
	wantCode(t, r, 0, "watcher status")
	if line, ok := findLogLine(r.Stdout, "events"); !ok || !strings.Contains(line, "json") {
		t.Errorf("watcher status has no row for events (json):\n%s", r.Stdout)
	}
	r = runWatcher(t, 15*time.Second, "status", "--addr", addr, "--json")
	wantCode(t, r, 0, "watcher status --json")
	var doc statusDoc
	if err := json.Unmarshal([]byte(r.Stdout), &doc); err != nil {
		t.Fatalf("watcher status --json is not JSON: %v\n%s", err, r.Stdout)
	}
	if len(doc.Targets) != 1 || doc.Targets[0].Name != "events" || doc.Targets[0].Backend != "json" {
		t.Errorf("watcher status --json targets: %+v", doc.Targets)
	}

	d.StopClean()
	d.WaitLog(time.Second, "stopped")
}

func TestStatusUnreachable(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t) // nothing listens there
	r := runWatcher(t, 30*time.Second, "status", "--addr", addr)
	wantCode(t, r, 1, "watcher status against a closed port")
	if !strings.Contains(r.Stderr+r.Stdout, addr) {
		t.Errorf("the error does not name %s:\n%s", addr, r)
	}
	r = runWatcher(t, 30*time.Second, "status", "--addr", addr, "--json")
	wantCode(t, r, 1, "watcher status --json against a closed port")
}

// TestDaemonReload: SIGHUP with a new target adds it; a broken config is
// refused and the old one keeps running.
func TestDaemonReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	addr := freeAddr(t)
	first := filepath.Join(dir, "data", "events.ndjson")
	second := filepath.Join(dir, "data", "second.ndjson")
	writeFile(t, first, genRecords(0, 20, 1795599000, 90))
	secondInitial := genRecords(0, 20, 1795599000, 90)
	writeFile(t, second, secondInitial)
	header := daemonHeader(addr, "", "")
	cfg := writeConfig(t, dir, header+jsonTarget("events", "events.ndjson", 100))
	d := startDaemon(t, cfg, addr)
	d.WaitReady(15 * time.Second)
	if _, err := d.targetStatus("second"); err == nil {
		t.Fatal("second is in /status before the reload")
	}

	writeConfig(t, dir, header+jsonTarget("events", "events.ndjson", 100)+jsonTarget("second", "second.ndjson", 50))
	d.Signal(syscall.SIGHUP)
	d.WaitLog(10*time.Second, "config reloaded")
	eventually(t, 5*time.Second, "second in /status", func() (bool, string) {
		ts, err := d.targetStatus("second")
		if err != nil {
			return false, err.Error()
		}
		return ts.Backend == "json", fmt.Sprintf("%+v", ts)
	})

	more := genRecords(20, 200, 1795599500, 90)
	appendRecords(t, second, more)
	rep := d.waitReport(15*time.Second, "second", func(report) bool { return true })
	if rep.Error != "" || rep.Trigger != "growth" {
		t.Fatalf("second: last_report %+v; want a successful growth compaction", rep)
	}
	all := append(append([]byte{}, secondInitial...), more...)
	eventually(t, 10*time.Second, "second compacted to 50 records", func() (bool, string) {
		got := readTarget(t, second)
		if !isSuffixOfLines(got, all) {
			t.Fatalf("second is not the newest lines of what was written")
		}
		n := bytes.Count(got, []byte("\n"))
		return n == 50, fmt.Sprintf("%d lines", n)
	})

	// A broken config is refused; both targets keep being watched.
	writeConfig(t, dir, header+jsonTarget("events", "events.ndjson", 100)+"\n[[target]]\nname = \"third\"\nbogus = 1\n")
	d.Signal(syscall.SIGHUP)
	line := d.WaitLog(10*time.Second, "refused")
	if !strings.Contains(line, "bogus") {
		t.Errorf("the refusal does not say what is wrong: %q", line)
	}
	if d.Exited() {
		t.Fatal("a broken config on SIGHUP stopped the daemon")
	}
	doc, err := d.status()
	if err != nil {
		t.Fatal(err)
	}
	if len(doc.Targets) != 2 {
		t.Fatalf("after a refused reload /status has %d targets, want the 2 of the running config", len(doc.Targets))
	}
	// The old config still works: growth of events is still compacted.
	appendRecords(t, first, genRecords(20, 200, 1795599500, 90))
	d.waitReport(15*time.Second, "events", func(r report) bool { return r.Error == "" && r.Trigger == "growth" })
	eventually(t, 10*time.Second, "events compacted to 100 records", func() (bool, string) {
		n := countLines(t, first)
		return n == 100, fmt.Sprintf("%d lines", n)
	})

	d.StopClean()
}

// TestDaemonSIGTERMMidCompaction: SIGTERM while a slow (throttled)
// compaction runs stops the daemon within the grace period, and the file is
// the old content or the compacted one, never a mix. The daemon's target
// sets method = "copy": only the throttled rewrite runs for seconds, with a
// temporary file to see it by (an in-place compaction takes milliseconds);
// the compaction after it has the default method.
func TestDaemonSIGTERMMidCompaction(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	addr := freeAddr(t)
	path := filepath.Join(dir, "data", "events.ndjson")
	initial := genRecords(0, 20, 1795599000, 90)
	writeFile(t, path, initial)
	const grace = time.Second
	// 40,000 records (8 MB) at 1 MB/s: the rewrite takes several seconds.
	cfg := writeConfig(t, dir, daemonHeader(addr, `shutdown_grace = "1s"`, `io_bytes_per_second = 1000000`)+
		jsonTargetMethod("events", "events.ndjson", 30000, "copy"))
	d := startDaemon(t, cfg, addr)
	d.WaitReady(15 * time.Second)

	more := genRecords(20, 40000, 1795599900, 90)
	all := append(append([]byte{}, initial...), more...)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(more); err != nil {
		t.Fatal(err)
	}
	f.Close()
	expected := bytes.Join(splitLines(all)[len(splitLines(all))-30000:], nil)

	eventually(t, 15*time.Second, "a compaction is running and writing its output", func() (bool, string) {
		ts, err := d.targetStatus("events")
		if err != nil {
			return false, err.Error()
		}
		if len(ts.LastReport) > 0 && string(ts.LastReport) != "null" {
			t.Fatalf("the compaction finished before SIGTERM (throttle not applied?): %s", ts.LastReport)
		}
		if !ts.Compacting {
			return false, "state " + ts.State
		}
		if len(leftovers(t, filepath.Join(dir, "data"))) == 0 {
			return false, "compacting, no temporary file yet"
		}
		return true, ""
	})
	sent := time.Now()
	d.Signal(syscall.SIGTERM)
	code := d.Wait(grace + 5*time.Second)
	took := time.Since(sent)
	if code != 0 {
		t.Fatalf("SIGTERM mid-compaction: exit %d, want 0", code)
	}
	t.Logf("stopped %s after SIGTERM (grace %s)", took, grace)

	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case bytes.Equal(got, all):
		t.Log("the compaction was abandoned: old content intact")
	case bytes.Equal(got, expected):
		t.Log("the compaction was finished within the grace period")
	default:
		t.Fatalf("after SIGTERM mid-compaction the file (%d bytes) is neither the old content (%d) nor the compacted one (%d)",
			len(got), len(all), len(expected))
	}

	// The next compaction (unthrottled) cleans up and produces the result.
	cfg2 := filepath.Join(dir, "compact.toml")
	writeFile(t, cfg2, []byte(daemonHeader("", "", "")+jsonTarget("events", "events.ndjson", 30000)))
	r := runWatcher(t, time.Minute, "compact", "--config", cfg2, "--json")
	wantCode(t, r, 0, "compact after SIGTERM")
	got = readTarget(t, path)
	if !bytes.Equal(got, expected) {
		t.Fatalf("compact after SIGTERM: %d bytes, want %d (the newest 30000 records)", len(got), len(expected))
	}
	wantNoLeftovers(t, filepath.Join(dir, "data"), filepath.Join(dir, "state"))
}

// TestDaemonRepoConfig runs the repository's own config.toml (its
// http_listen moved to a free port so parallel runs do not collide).
func TestDaemonRepoConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	data, err := os.ReadFile(filepath.Join(repoRoot, "config.toml"))
	if err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	listen := regexp.MustCompile(`(?m)^http_listen = "[^"]*"`)
	if !listen.Match(data) {
		t.Fatal("config.toml has no http_listen line")
	}
	data = listen.ReplaceAll(data, []byte(fmt.Sprintf("http_listen = %q", addr)))
	cfg := writeConfig(t, dir, string(data))
	// The repo's data/ holds only its README in a clone (the rest is
	// git-ignored and may be anything locally).
	readme, err := os.ReadFile(filepath.Join(repoRoot, "data", "README.md"))
	if err != nil {
		t.Fatalf("the repo's data/ dir: %v", err)
	}
	writeFile(t, filepath.Join(dir, "data", "README.md"), readme)

	d := startDaemon(t, cfg, addr)
	d.WaitReady(15 * time.Second)
	doc, err := d.status()
	if err != nil {
		t.Fatal(err)
	}
	if len(doc.Targets) != 2 {
		t.Errorf("config.toml: /status has %d targets, want events and audit", len(doc.Targets))
	}
	d.StopClean()
	if _, err := os.Stat(filepath.Join(dir, ".watcher")); err != nil {
		t.Errorf("state_dir .watcher was not created next to the config: %v", err)
	}
}

// TestDaemonMetricsWithRedis: with a file target and a redis target (the
// shared Redis) every documented metric name is exposed.
func TestDaemonMetricsWithRedis(t *testing.T) {
	t.Parallel()
	url := testutil.SharedRedis(t)
	prefix := testutil.UniquePrefix(t, url)
	dir := t.TempDir()
	addr := freeAddr(t)
	path := filepath.Join(dir, "data", "events.ndjson")
	writeFile(t, path, genRecords(0, 20, 1795599000, 90))
	cfg := writeConfig(t, dir, daemonHeader(addr, "", "")+`
[triggers.redis_memory]
interval = "200ms"
high_percent = 99
low_percent = 98
`+jsonTarget("events", "events.ndjson", 100)+fmt.Sprintf(`
[[target]]
name = "streams"
backend = "redis"
url = %q
prefix = %q
[target.retention]
max_records = 100
`, url, prefix))
	d := startDaemon(t, cfg, addr)
	d.WaitReady(15 * time.Second)
	appendRecords(t, path, genRecords(20, 200, 1795599500, 90))
	d.waitReport(15*time.Second, "events", func(r report) bool { return r.Error == "" })
	eventually(t, 10*time.Second, "every documented metric in /metrics", func() (bool, string) {
		code, body, err := d.Get("/metrics")
		if err != nil || code != 200 {
			return false, fmt.Sprintf("%d %v", code, err)
		}
		miss := missingMetrics(body, interfaceMetrics)
		return len(miss) == 0, fmt.Sprintf("missing %v", miss)
	})
	ts, err := d.targetStatus("streams")
	if err != nil {
		t.Fatal(err)
	}
	if ts.Backend != "redis" {
		t.Errorf("streams backend %q", ts.Backend)
	}
	d.StopClean()
}

// TestDaemonNATSPreBackup: a daemon connected to an embedded NATS server
// answers `watcher request pre-backup` with a report per target, after
// compacting them.
func TestDaemonNATSPreBackup(t *testing.T) {
	t.Parallel()
	ns := testutil.StartNATS(t)
	dir := t.TempDir()
	addr := freeAddr(t)
	path := filepath.Join(dir, "data", "events.ndjson")
	all := genRecords(0, 300, 1795599000, 90)
	writeFile(t, path, all)
	cfg := writeConfig(t, dir, daemonHeader(addr, "", "")+fmt.Sprintf(`
[nats]
url = %q
`, ns.URL)+jsonTarget("events", "events.ndjson", 100))
	d := startDaemon(t, cfg, addr)
	d.WaitReady(15 * time.Second)

	r := runWatcher(t, 30*time.Second, "request", "pre-backup", "--nats", ns.URL, "--expect", "1", "--timeout", "20s")
	wantCode(t, r, 0, "watcher request pre-backup")
	line, ok := findLogLine(r.Stdout, "events")
	if !ok {
		t.Fatalf("no row for target events in the reply:\n%s", r)
	}
	if !strings.Contains(line, "it-node") && !strings.Contains(r.Stdout, "it-node") {
		t.Errorf("the reply does not name the node it-node:\n%s", r.Stdout)
	}
	got := readTarget(t, path)
	if want := bytes.Join(splitLines(all)[200:], nil); !bytes.Equal(got, want) {
		t.Errorf("after pre-backup the file has %d lines, want the newest 100", bytes.Count(got, []byte("\n")))
	}
	rep := d.waitReport(5*time.Second, "events", func(report) bool { return true })
	if rep.Trigger != "nats" || rep.Error != "" {
		t.Errorf("last_report after pre-backup: %+v; want a successful nats compaction", rep)
	}

	// Nobody answers on another subject prefix: exit 1.
	other := testutil.StartNATS(t)
	r = runWatcher(t, 30*time.Second, "request", "pre-backup", "--nats", other.URL, "--expect", "1", "--timeout", "1s")
	wantCode(t, r, 1, "watcher request with no daemon listening")

	d.StopClean()
}

// TestDaemonKilledMidCompaction: SIGKILL of the daemon while a throttled
// compaction writes its output leaves the old content; the restarted daemon
// recovers (removes the leftovers) before it is ready, and compacts again.
// The first daemon's target sets method = "copy": the subject is a kill
// while the rewrite's output is half written (an in-place compaction has no
// output file and takes milliseconds); the restarted one has the default
// method.
func TestDaemonKilledMidCompaction(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	addr := freeAddr(t)
	data := filepath.Join(dir, "data")
	path := filepath.Join(data, "events.ndjson")
	initial := genRecords(0, 20, 1795599000, 90)
	writeFile(t, path, initial)
	cfg := writeConfig(t, dir, daemonHeader(addr, "", `io_bytes_per_second = 1000000`)+
		jsonTargetMethod("events", "events.ndjson", 30000, "copy"))
	d := startDaemon(t, cfg, addr)
	d.WaitReady(15 * time.Second)
	more := genRecords(20, 40000, 1795599900, 90)
	all := append(append([]byte{}, initial...), more...)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(more); err != nil {
		t.Fatal(err)
	}
	f.Close()
	eventually(t, 15*time.Second, "a temporary file of the running compaction", func() (bool, string) {
		if d.Exited() {
			t.Fatalf("watcher run exited\n%s", d.Stderr())
		}
		return len(leftovers(t, data)) > 0, "none yet"
	})
	d.Signal(syscall.SIGKILL)
	d.Wait(5 * time.Second)
	if got, _ := os.ReadFile(path); !bytes.Equal(got, all) {
		t.Fatalf("after SIGKILL mid-write the file (%d bytes) is not the old content (%d bytes)", len(got), len(all))
	}
	if len(leftovers(t, data)) == 0 {
		t.Fatal("no temporary file after SIGKILL mid-write: the kill did not land mid-write")
	}

	// Restart, unthrottled: recovery removes the leftovers, and the next
	// growth is compacted as usual.
	// The retention trigger's byte threshold is lowered so that its 10 %
	// ratio is what bounds the file below (1 MiB is ~4,500 of these lines,
	// more than 10 % of 30,000).
	writeConfig(t, dir, daemonHeader(addr, "", "")+`
[triggers.retention]
min_reclaimable_bytes = 65536
`+jsonTarget("events", "events.ndjson", 30000))
	d2 := startDaemon(t, cfg, addr)
	d2.WaitReady(15 * time.Second)
	eventually(t, 5*time.Second, "leftovers removed by the restarted daemon", func() (bool, string) {
		l := leftovers(t, data)
		return len(l) == 0, fmt.Sprint(l)
	})
	// Recovery loses nothing; the restarted daemon may already have
	// compacted (the retention trigger finds 25 % reclaimable at once), in
	// which case the newest 30,000 records are there.
	if got := readTarget(t, path); !bytes.Equal(got, all) && !(isSuffixOfLines(got, all) && bytes.Count(got, []byte("\n")) >= 30000) {
		t.Fatalf("after recovery the file (%d bytes) is neither the old content (%d bytes) nor its newest 30000 records", len(got), len(all))
	}
	more2 := genRecords(40020, 25000, 1795599950, 90)
	appendRecords(t, path, more2)
	all = append(all, more2...)
	d2.waitReport(20*time.Second, "events", func(r report) bool { return r.Error == "" })
	// The writer appends line by line, so a compaction may run while it
	// writes; what it appends meanwhile stays until the retention trigger's
	// thresholds (10 % of the target and 64 KiB reclaimable) are reached
	// again.
	eventually(t, 10*time.Second, "compacted to the newest 30000 records (within 10 %)", func() (bool, string) {
		got := readTarget(t, path)
		if !isSuffixOfLines(got, all) {
			t.Fatalf("the compacted file is not the newest lines of what was written")
		}
		n := bytes.Count(got, []byte("\n"))
		return n >= 30000 && n < 33000, fmt.Sprintf("%d lines", n)
	})
	d2.StopClean()
	wantNoLeftovers(t, data, filepath.Join(dir, "state"))
}

// TestDaemonRotating: a stuck rotation set whose active file grows is
// compacted by the daemon back into at most max_files files of at most
// max_bytes, keeping the newest records.
func TestDaemonRotating(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	addr := freeAddr(t)
	data := filepath.Join(dir, "data")
	src := "testdata/papyra/rotating/stuck_rotation_overgrown_active"
	c := loadCase(t, src)
	copyDir(t, filepath.Join(src, "input"), data)
	var all []byte
	for i := c.MaxFiles - 1; i >= 0; i-- {
		name := c.Active
		if i > 0 {
			name += "." + strconv.Itoa(i)
		}
		b, _ := os.ReadFile(filepath.Join(data, name))
		all = append(all, b...)
	}
	cfg := writeConfig(t, dir, daemonHeader(addr, "", "")+fmt.Sprintf(`
[[target]]
name = "audit"
backend = "rotating"
path = "data/%s"
max_bytes = %d
max_files = %d
[target.retention]
max_records = 40
`, c.Active, c.MaxBytes, c.MaxFiles))
	d := startDaemon(t, cfg, addr)
	d.WaitReady(15 * time.Second)
	// Short records: the 40 kept fit in max_files × max_bytes.
	more := genRecords(0, 200, 1795599990, 10)
	appendRecords(t, filepath.Join(data, c.Active), more)
	all = append(all, more...)
	rep := d.waitReport(15*time.Second, "audit", func(report) bool { return true })
	if rep.Error != "" || rep.Trigger != "growth" || rep.Backend != "rotating" {
		t.Fatalf("last_report %+v; want a successful growth compaction of the rotating set", rep)
	}
	files := readTargetFiles(t, data)
	if rep.AppendedDuring == 0 {
		lines := splitLines(all)
		want := chunk(lines[len(lines)-40:], c.Active, c.MaxBytes, c.MaxFiles)
		if !sameFiles(files, want) {
			t.Errorf("rotation set after compaction: %s; want exactly %s laid out as Papyra would", names(files), names(want))
		}
	}
	var joined []byte
	for i := c.MaxFiles - 1; i >= 0; i-- {
		name := c.Active
		if i > 0 {
			name += "." + strconv.Itoa(i)
		}
		b, ok := files[name]
		if !ok {
			continue
		}
		if int64(len(b)) > c.MaxBytes {
			t.Errorf("%s holds %d bytes, more than max_bytes %d", name, len(b), c.MaxBytes)
		}
		joined = append(joined, b...)
		delete(files, name)
	}
	if len(files) > 0 {
		t.Errorf("files beyond the rotation set after compaction: %s", names(files))
	}
	if n := bytes.Count(joined, []byte("\n")); n < 40 || !isSuffixOfLines(joined, all) {
		t.Errorf("the set holds %d lines; want the newest 40 (or more, appended meanwhile) of what was written", n)
	}
	d.StopClean()
}
