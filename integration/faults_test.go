package integration

// Fault injection with the real thing: a read-only filesystem, permission
// denied (the binary run as nobody), the target deleted mid-compaction, a
// missing target directory, a target that keeps failing in the daemon, and
// the NATS server restarted during a pending request. ENOSPC
// (tmpfs_test.go), SIGTERM (daemon_test.go), SIGKILL (crash_test.go,
// crash_livewriter_test.go), a replaced target (backends/jsonfile) and
// Redis killed (backends/redis) are tested elsewhere.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/papyra/watcher/internal/testutil"
)

// faultCompactConfig is a one-shot config for one json target at an
// absolute path, with its state directory at stateDir.
func faultCompactConfig(stateDir, path string, maxRecords int, extraPolicy string) string {
	return faultCompactConfigMethod(stateDir, path, maxRecords, extraPolicy, "")
}

// faultCompactConfigMethod is faultCompactConfig with the target's method
// set (the default when empty).
func faultCompactConfigMethod(stateDir, path string, maxRecords int, extraPolicy, method string) string {
	m := ""
	if method != "" {
		m = fmt.Sprintf("method = %q\n", method)
	}
	return fmt.Sprintf(`[watcher]
state_dir = %q
http_listen = ""

[policy]
partial_line_grace = "876000h"
%s

[triggers.timer]
interval = "0s"

[[target]]
name = "events"
backend = "json"
path = %q
%s[target.retention]
max_records = %d
`, stateDir, extraPolicy, path, m, maxRecords)
}

// TestFaultReadOnlyFilesystem: a target on a filesystem remounted
// read-only cannot be compacted: `watcher compact` exits 1 with an error
// that names the path and says why, the file is intact, nothing is left
// behind; once the filesystem is writable again the same command succeeds.
// A state directory on a read-only filesystem is refused clearly too.
func TestFaultReadOnlyFilesystem(t *testing.T) {
	dir := t.TempDir()
	var data string
	remount := func(ro bool) {}
	if os.Geteuid() == 0 {
		data = mountTmpfs(t, 8)
		remount = func(ro bool) {
			t.Helper()
			opt := "remount,rw"
			if ro {
				opt = "remount,ro"
			}
			if out, err := exec.Command("mount", "-o", opt, data).CombinedOutput(); err != nil {
				t.Fatalf("mount -o %s %s: %v: %s", opt, data, err, out)
			}
		}
		t.Cleanup(func() { remount(false) })
	} else {
		// Without root a mode-0555 directory stands in for a read-only
		// filesystem (root would ignore the mode).
		data = filepath.Join(dir, "data")
		remount = func(ro bool) {
			mode := os.FileMode(0o755)
			if ro {
				mode = 0o555
			}
			if err := os.Chmod(data, mode); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() { os.Chmod(data, 0o755) })
	}
	path := filepath.Join(data, "events.ndjson")
	orig := genRecords(0, 500, 1795599000, 40)
	writeFile(t, path, orig)
	cfg := writeConfig(t, dir, faultCompactConfig(filepath.Join(dir, "state"), path, 100, ""))

	remount(true)
	r := runWatcher(t, 30*time.Second, "compact", "--config", cfg, "--json")
	wantCode(t, r, 1, "compact on a read-only filesystem")
	reps := parseReports(t, r.Stdout)
	if len(reps) != 1 || !strings.Contains(reps[0].Error, data) ||
		!(strings.Contains(reps[0].Error, "read-only file system") || strings.Contains(reps[0].Error, "permission denied")) {
		t.Errorf("the error should name the directory and say read-only: %+v", reps)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, orig) {
		t.Fatalf("the target changed on a read-only filesystem (%d bytes, was %d)", len(got), len(orig))
	}
	// A dry run still works: it only reads.
	r = runWatcher(t, 30*time.Second, "compact", "--config", cfg, "--json", "--dry-run")
	wantCode(t, r, 0, "dry run on a read-only filesystem")
	if reps := parseReports(t, r.Stdout); len(reps) != 1 || reps[0].AfterRecords != 100 {
		t.Errorf("dry run: %+v", reps)
	}

	remount(false)
	r = runWatcher(t, 30*time.Second, "compact", "--config", cfg, "--json")
	wantCode(t, r, 0, "compact once the filesystem is writable again")
	if got := readTarget(t, path); !bytes.Equal(got, bytes.Join(splitLines(orig)[400:], nil)) {
		t.Errorf("after recovery the target holds %d lines, want the newest 100", countLines(t, path))
	}
	wantNoLeftovers(t, data, filepath.Join(dir, "state"))

	// The state directory on the read-only filesystem.
	writeFile(t, path, orig)
	cfg2 := writeConfig(t, t.TempDir(), faultCompactConfig(filepath.Join(data, "state"), path, 100, ""))
	remount(true)
	r = runWatcher(t, 30*time.Second, "compact", "--config", cfg2, "--json")
	wantCode(t, r, 1, "compact with its state directory on a read-only filesystem")
	if !strings.Contains(r.Stdout+r.Stderr, filepath.Join(data, "state")) {
		t.Errorf("the error should name the state directory %s:\n%s", filepath.Join(data, "state"), r)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, orig) {
		t.Fatalf("the target changed though the state directory could not be written")
	}
}

// nobodyDir creates a fresh directory that the user nobody can traverse (a
// test's TempDir is 0700, root's own), removed at the end.
func nobodyDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "watcher-it-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// runAsNobody runs the built binary (copied where nobody can execute it)
// as uid/gid 65534 with args.
func runAsNobody(t *testing.T, base string, args ...string) result {
	t.Helper()
	bin := filepath.Join(base, "watcher")
	if _, err := os.Stat(bin); err != nil {
		data, err := os.ReadFile(watcherBin)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bin, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = base
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start watcher as nobody: %v", err)
	}
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("watcher %v as nobody did not exit within 30s", args)
	}
	r := result{Stdout: stdout.String(), Stderr: stderr.String(), Duration: time.Since(start)}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.Code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestFaultPermissionDenied: the binary, run as nobody, meets a target it
// may read but whose directory it may not write, and one it may not read:
// both fail with exit 1 and an error naming the path and "permission
// denied"; the files are intact and nothing is left behind. With the
// directory made writable for nobody the compaction succeeds and keeps the
// file's owner.
func TestFaultPermissionDenied(t *testing.T) {
	if os.Geteuid() != 0 {
		needOrSkip(t, "dropping privileges to nobody needs root (run the integration tests as root)")
	}
	base := nobodyDir(t)
	state := filepath.Join(base, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(state, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(base, "data")
	writeFile(t, filepath.Join(data, "readable.ndjson"), genRecords(0, 200, 1795599000, 30))
	writeFile(t, filepath.Join(data, "secret.ndjson"), genRecords(0, 200, 1795599000, 30))
	if err := os.Chmod(filepath.Join(data, "secret.ndjson"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"readable.ndjson", "secret.ndjson"} {
		path := filepath.Join(data, name)
		orig, _ := os.ReadFile(path)
		cfg := writeConfig(t, filepath.Join(base, strings.TrimSuffix(name, ".ndjson")), faultCompactConfig(state, path, 50, ""))
		os.Chmod(filepath.Dir(cfg), 0o755)
		os.Chmod(cfg, 0o644)
		r := runAsNobody(t, base, "compact", "--config", cfg, "--json")
		wantCode(t, r, 1, "compact as nobody of "+name)
		reps := parseReports(t, r.Stdout)
		if len(reps) != 1 || !strings.Contains(reps[0].Error, "permission denied") || !strings.Contains(reps[0].Error, data) {
			t.Errorf("%s: the error should name the path and say permission denied: %+v", name, reps)
		}
		if got, _ := os.ReadFile(path); !bytes.Equal(got, orig) {
			t.Errorf("%s changed though permission was denied", name)
		}
	}
	wantNoLeftovers(t, data, state)

	// Give nobody the directory and the file: it works, the owner stays.
	path := filepath.Join(data, "readable.ndjson")
	for _, p := range []string{data, path} {
		if err := os.Chown(p, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	r := runAsNobody(t, base, "compact", "--config", filepath.Join(base, "readable", "config.toml"), "--json")
	wantCode(t, r, 0, "compact as nobody of its own file")
	if n := countLines(t, path); n != 50 {
		t.Errorf("after compaction as nobody the file holds %d lines, want 50", n)
	}
	if fi, err := os.Stat(path); err != nil || fi.Sys().(*syscall.Stat_t).Uid != 65534 {
		t.Errorf("owner after compaction as nobody: %v", err)
	}
	wantNoLeftovers(t, data, state)
}

// TestFaultTargetDeletedMidCompaction: the target file is deleted while a
// throttled `watcher compact` copies it. The compaction fails with an error
// saying the target was replaced or deleted, does not resurrect the file,
// and leaves no temporary file, old link or journal. The target sets
// method = "copy": the subject is the rewrite, which copies even a file
// whose records are all kept; with the default method such a compaction
// changes nothing (method none) and there is no copy to delete the target
// under.
func TestFaultTargetDeletedMidCompaction(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	path := filepath.Join(data, "events.ndjson")
	// 6 MB kept in full (no record is old or over the count) at 2 MB/s:
	// about two seconds of copying after the first burst.
	writeFile(t, path, genRecords(0, 30000, 1795599000, 130))
	cfg := writeConfig(t, dir, faultCompactConfigMethod(filepath.Join(dir, "state"), path, 1000000, "io_bytes_per_second = 2000000", "copy"))
	cmd := exec.Command(watcherBin, "compact", "--config", cfg, "--json")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// Delete the target once the compaction has started writing its copy.
	eventually(t, 20*time.Second, "a temporary copy appears", func() (bool, string) {
		select {
		case err := <-done:
			t.Fatalf("watcher compact ended before the target could be deleted (%v): the copy was too fast\n%s", err, stderr.String())
		default:
		}
		ents, _ := os.ReadDir(data)
		for _, e := range ents {
			if strings.Contains(e.Name(), ".watcher-tmp-") {
				return true, ""
			}
		}
		return false, fmt.Sprint(len(ents), " entries")
	})
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	var err error
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatal("watcher compact did not end within 60s of the deletion")
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("want exit 1, got %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	reps := parseReports(t, stdout.String())
	if len(reps) != 1 || !(strings.Contains(reps[0].Error, "replaced") || strings.Contains(reps[0].Error, "deleted")) {
		t.Errorf("the error should say the target was replaced or deleted: %+v", reps)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("the deleted target was resurrected (%v): whoever deleted it meant it", err)
	}
	wantNoLeftovers(t, data, filepath.Join(dir, "state"))
	// The next run finds nothing to do and succeeds.
	r := runWatcher(t, 30*time.Second, "compact", "--config", cfg, "--json")
	wantCode(t, r, 0, "compact of the deleted target")
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("compacting a missing target created it (%v)", err)
	}
}

// TestFaultTargetDirectoryMissing: a target whose directory does not exist
// is an empty target for `watcher compact` (exit 0, nothing created); the
// daemon starts and stays healthy with it, and once the directory and the
// file appear and grow, compacts it.
func TestFaultTargetDirectoryMissing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	data := filepath.Join(dir, "data", "later")
	path := filepath.Join(data, "events.ndjson")
	cfg := writeConfig(t, dir, faultCompactConfig(filepath.Join(dir, "state"), path, 100, ""))
	r := runWatcher(t, 30*time.Second, "compact", "--config", cfg, "--json")
	wantCode(t, r, 0, "compact of a target whose directory is missing")
	if reps := parseReports(t, r.Stdout); len(reps) != 1 || reps[0].BeforeRecords != 0 || reps[0].Error != "" {
		t.Errorf("reports: %+v", reps)
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); !os.IsNotExist(err) {
		t.Errorf("compact created the missing directory (%v)", err)
	}

	addr := freeAddr(t)
	dcfg := writeConfig(t, t.TempDir(), daemonHeader(addr, "", "")+fmt.Sprintf(`
[[target]]
name = "events"
backend = "json"
path = %q
[target.retention]
max_records = 100
`, path))
	d := startDaemon(t, dcfg, addr)
	d.WaitReady(15 * time.Second)
	if code, _, err := d.Get("/healthz"); err != nil || code != 200 {
		t.Fatalf("/healthz with a missing directory: %d %v", code, err)
	}
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	all := genRecords(0, 400, 1795599000, 60)
	appendRecords(t, path, all)
	d.waitReport(30*time.Second, "events", func(r report) bool { return r.Error == "" && r.AfterRecords >= 100 && r.BeforeRecords > 100 })
	eventually(t, 10*time.Second, "file compacted to the newest records", func() (bool, string) {
		got := readTarget(t, path)
		return bytes.Count(got, []byte("\n")) <= 400 && isSuffixOfLines(got, all) && bytes.Count(got, []byte("\n")) >= 100, fmt.Sprint(len(got))
	})
	d.StopClean()
}

// TestFaultStuckTargetVisible: a daemon target whose compaction fails every
// time (its path is a symlink, not allowed) is retried with a growing
// backoff, then reported stuck in /status (stuck, consecutive_failures,
// backing_off) and in /metrics (target_stuck 1); the other target keeps
// being compacted; once the fault is fixed the target recovers and is no
// longer stuck.
func TestFaultStuckTargetVisible(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	addr := freeAddr(t)
	data := filepath.Join(dir, "data")
	bad := filepath.Join(data, "bad.ndjson")
	real := filepath.Join(dir, "elsewhere.ndjson")
	writeFile(t, real, genRecords(0, 50, 1795599000, 30))
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, bad); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(data, "good.ndjson")
	writeFile(t, good, genRecords(0, 50, 1795599000, 30))
	body := daemonHeader(addr, "", `backoff_base = "200ms"
backoff_max = "800ms"`)
	body = strings.Replace(body, "[triggers.timer]\ninterval = \"0s\"", "[triggers.timer]\ninterval = \"1s\"\njitter = \"0%\"", 1)
	cfg := writeConfig(t, dir, body+jsonTarget("bad", "bad.ndjson", 10)+jsonTarget("good", "good.ndjson", 10))
	d := startDaemon(t, cfg, addr)
	d.WaitReady(15 * time.Second)

	var ts struct {
		Name                string  `json:"name"`
		State               string  `json:"state"`
		Stuck               bool    `json:"stuck"`
		ConsecutiveFailures int     `json:"consecutive_failures"`
		LastReport          *report `json:"last_report"`
	}
	statusOf := func(name string) error {
		code, body, err := d.Get("/status")
		if err != nil || code != 200 {
			return fmt.Errorf("/status: %d %v", code, err)
		}
		var doc struct {
			Targets []json.RawMessage `json:"targets"`
		}
		if err := json.Unmarshal([]byte(body), &doc); err != nil {
			return err
		}
		for _, raw := range doc.Targets {
			ts.Name = ""
			json.Unmarshal(raw, &ts)
			if ts.Name == name {
				return nil
			}
		}
		return fmt.Errorf("no %s in /status", name)
	}
	stuckMetric := func(name string) float64 {
		_, body, err := d.Get("/metrics")
		if err != nil {
			return -1
		}
		v, ok := metricValue(parseMetrics(body), "papyra_compactor_target_stuck", map[string]string{"target": name})
		if !ok {
			return -1
		}
		return v
	}
	eventually(t, 30*time.Second, "bad target stuck in /status and /metrics", func() (bool, string) {
		if err := statusOf("bad"); err != nil {
			return false, err.Error()
		}
		m := stuckMetric("bad")
		return ts.Stuck && ts.ConsecutiveFailures >= 3 && m == 1 && ts.LastReport != nil && ts.LastReport.Error != "",
			fmt.Sprintf("stuck=%v failures=%d state=%s target_stuck=%v", ts.Stuck, ts.ConsecutiveFailures, ts.State, m)
	})
	if !strings.Contains(ts.LastReport.Error, "symbolic link") {
		t.Errorf("last error of the stuck target: %q", ts.LastReport.Error)
	}
	// The backoff grew: the retry delays logged for failures 1 and 2 are
	// at least backoff_base and the second at least the first.
	var delays []time.Duration
	for _, line := range strings.Split(d.Stderr(), "\n") {
		if !strings.Contains(line, "target=bad") || !strings.Contains(line, "will retry") {
			continue
		}
		at := fieldOf(line, "time=")
		retry := fieldOf(line, "retry_at=")
		t0, err1 := time.Parse(time.RFC3339Nano, at)
		t1, err2 := time.Parse(time.RFC3339Nano, retry)
		if err1 == nil && err2 == nil {
			delays = append(delays, t1.Sub(t0))
		}
	}
	t.Logf("retry delays logged before the target was stuck: %v", delays)
	if len(delays) < 2 || delays[0] < 150*time.Millisecond || delays[1] < delays[0] {
		t.Errorf("retry delays after the first failures %v: want a backoff from 200ms, growing", delays)
	}
	if err := statusOf("good"); err != nil || ts.Stuck || ts.LastReport == nil || ts.LastReport.Error != "" {
		t.Errorf("the good target should keep being compacted: %+v %v", ts, err)
	}
	if n := countLines(t, good); n != 10 {
		t.Errorf("good target holds %d lines, want 10", n)
	}

	// Fix the fault: the path becomes a regular file.
	if err := os.Remove(bad); err != nil {
		t.Fatal(err)
	}
	writeFile(t, bad, genRecords(0, 50, 1795599000, 30))
	eventually(t, 30*time.Second, "bad target recovered", func() (bool, string) {
		if err := statusOf("bad"); err != nil {
			return false, err.Error()
		}
		m := stuckMetric("bad")
		return !ts.Stuck && ts.ConsecutiveFailures == 0 && m == 0 && ts.LastReport != nil && ts.LastReport.Error == "",
			fmt.Sprintf("stuck=%v failures=%d target_stuck=%v", ts.Stuck, ts.ConsecutiveFailures, m)
	})
	if n := countLines(t, bad); n != 10 {
		t.Errorf("recovered target holds %d lines, want 10", n)
	}
	if got, _ := os.ReadFile(real); countLinesBytes(got) != 50 {
		t.Errorf("the symlink's target was compacted though the link was refused")
	}
	d.StopClean()
}

func countLinesBytes(b []byte) int { return bytes.Count(b, []byte("\n")) }

// fieldOf returns the value of key (like "time=") in a logfmt line.
func fieldOf(line, key string) string {
	i := strings.Index(line, " "+key)
	if i < 0 {
		if !strings.HasPrefix(line, key) {
			return ""
		}
		i = -1
	}
	v := line[i+1+len(key):]
	if j := strings.IndexByte(v, ' '); j >= 0 {
		v = v[:j]
	}
	return v
}

// TestFaultNATSRestartDuringRequest: the NATS server restarts while a
// request waits for a slow (throttled) compaction. The client gets an
// answer or a clear timeout (never a hang), the compaction completes
// without loss, and once the daemon has reconnected it answers new
// requests. The target sets method = "copy": only the throttled rewrite
// runs long enough to restart the server under it (an in-place compaction
// takes milliseconds, whatever the throttle).
func TestFaultNATSRestartDuringRequest(t *testing.T) {
	t.Parallel()
	ns := testutil.StartNATS(t)
	dir := t.TempDir()
	addr := freeAddr(t)
	path := filepath.Join(dir, "data", "events.ndjson")
	all := genRecords(0, 30000, 1795599000, 130) // ~6 MB
	writeFile(t, path, all)
	// The retention trigger is off: it would find 16 % reclaimable at the
	// start and run the compaction the request is about first.
	cfg := writeConfig(t, dir, daemonHeader(addr, "", "io_bytes_per_second = 2000000")+fmt.Sprintf(`
[triggers.retention]
interval = "0s"

[nats]
url = %q
`, ns.URL)+jsonTargetMethod("events", "events.ndjson", 25000, "copy"))
	d := startDaemon(t, cfg, addr)
	d.WaitReady(15 * time.Second)

	nc, err := nats.Connect(ns.URL, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	type answer struct {
		msg *nats.Msg
		err error
		at  time.Duration
	}
	ans := make(chan answer, 1)
	start := time.Now()
	go func() {
		m, err := nc.Request("papyra.compaction.compact", []byte(`{"targets":["events"],"reason":"restart test"}`), 8*time.Second)
		ans <- answer{m, err, time.Since(start)}
	}()
	// Restart the server while the compaction runs.
	eventually(t, 20*time.Second, "compaction running", func() (bool, string) {
		ents, _ := os.ReadDir(filepath.Dir(path))
		for _, e := range ents {
			if strings.Contains(e.Name(), ".watcher-tmp-") {
				return true, ""
			}
		}
		return false, "no temporary copy yet"
	})
	ns.Restart()
	var a answer
	select {
	case a = <-ans:
	case <-time.After(30 * time.Second):
		t.Fatal("the request neither got an answer nor timed out within 30s")
	}
	switch {
	case a.err == nil:
		var rep secReply
		if err := json.Unmarshal(a.msg.Data, &rep); err != nil {
			t.Fatalf("reply is not JSON: %v", err)
		}
		t.Logf("answer after the restart (%s): ok=%v error=%q", a.at, rep.OK, rep.Error)
		if !rep.OK && rep.Error == "" {
			t.Errorf("a not-ok reply must say why: %s", a.msg.Data)
		}
	case errors.Is(a.err, nats.ErrTimeout) || errors.Is(a.err, nats.ErrNoResponders) || errors.Is(a.err, nats.ErrConnectionClosed):
		t.Logf("clear error after the restart (%s): %v", a.at, a.err)
	default:
		t.Errorf("request during the restart: unexpected error %v", a.err)
	}
	// The compaction was not disturbed by the restart.
	rep := d.waitReport(60*time.Second, "events", func(r report) bool { return r.Trigger == "nats" })
	if rep.Error != "" || rep.AfterRecords != 25000 {
		t.Errorf("compaction during the restart: %+v", rep)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, bytes.Join(splitLines(all)[5000:], nil)) {
		t.Errorf("target after the compaction holds %d lines, want the newest 25000", countLinesBytes(got))
	}
	// After reconnecting the daemon answers again.
	eventually(t, 30*time.Second, "daemon answers after the restart", func() (bool, string) {
		m, err := nc.Request("papyra.compaction.node.it-node.compact", []byte(`{"targets":["events"],"dry_run":true}`), 5*time.Second)
		if err != nil {
			return false, err.Error()
		}
		var r secReply
		json.Unmarshal(m.Data, &r)
		return r.OK && len(r.Reports) == 1, string(m.Data)
	})
	if code, body, _ := d.Get("/readyz"); code != 200 {
		t.Errorf("/readyz after the restart: %d %s", code, body)
	}
	d.Signal(syscall.SIGTERM)
	if code := d.Wait(20 * time.Second); code != 0 {
		t.Errorf("SIGTERM: exit %d", code)
	}
}
