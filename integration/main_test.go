package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/papyra/watcher/internal/testlog"
)

// watcherBin is the path of the binary TestMain built.
var watcherBin string

// repoRoot is the repository root (the parent of this package's directory).
var repoRoot string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	repoRoot = filepath.Dir(wd)
	dir, err := os.MkdirTemp("", "watcher-it-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	watcherBin = filepath.Join(dir, "watcher")
	args := []string{"build", "-o", watcherBin}
	if v := os.Getenv("WATCHER_IT_RACE"); v != "" && v != "0" && v != "false" {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/watcher")
	cmd := exec.Command("go", args...)
	cmd.Dir = repoRoot
	out, err := cmd.CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: go build ./cmd/watcher failed: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// inCI reports whether the CI environment variable asks tests to fail
// instead of skipping when something they need is missing.
func inCI() bool {
	v := os.Getenv("CI")
	return v != "" && v != "0" && v != "false"
}

// needOrSkip skips the test with msg, or fails it under CI.
func needOrSkip(t testing.TB, msg string) {
	t.Helper()
	if inCI() {
		t.Fatalf("CI is set and this test cannot run: %s", msg)
	}
	t.Skip(msg)
}

// result is the outcome of one run of the binary.
type result struct {
	Stdout, Stderr string
	Code           int
	Duration       time.Duration
}

func (r result) String() string {
	return fmt.Sprintf("exit %d after %s\n--- stdout:\n%s\n--- stderr:\n%s", r.Code, r.Duration, r.Stdout, r.Stderr)
}

// runWatcher runs the binary with args and returns when it exits; it fails
// the test if it does not exit within timeout.
func runWatcher(t testing.TB, timeout time.Duration, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, watcherBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{Stdout: stdout.String(), Stderr: stderr.String(), Duration: time.Since(start)}
	if ctx.Err() != nil {
		t.Fatalf("watcher %s: did not exit within %s\n%s", strings.Join(args, " "), timeout, r)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.Code = ee.ExitCode()
	default:
		t.Fatalf("watcher %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// wantCode fails the test unless r exited with code.
func wantCode(t testing.TB, r result, code int, what string) {
	t.Helper()
	if r.Code != code {
		t.Fatalf("%s: want exit %d, got\n%s", what, code, r)
	}
}

// writeFile writes data to path, creating its directory.
func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeConfig writes a config file named config.toml in dir and returns its
// path.
func writeConfig(t testing.TB, dir, body string) string {
	t.Helper()
	path := filepath.Join(dir, "config.toml")
	writeFile(t, path, []byte(body))
	return path
}

// freeAddr returns a loopback address with a port that was free a moment
// ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// copyDir copies the regular files of src into dst (created), writable.
func copyDir(t testing.TB, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dst, e.Name()), data)
	}
}

// readDirFiles returns the regular files of dir by name.
func readDirFiles(t testing.TB, dir string) map[string][]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = data
	}
	return out
}

// leftovers lists the names under dir (recursively) that look like a
// watcher temporary file, staging file or journal.
func leftovers(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		name := d.Name()
		if strings.Contains(name, ".watcher-") || strings.Contains(name, "journal") ||
			strings.HasSuffix(name, ".tmp") || strings.Contains(name, "staging") {
			rel, _ := filepath.Rel(dir, path)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

// wantNoLeftovers fails the test if any watcher leftovers are under dirs.
func wantNoLeftovers(t testing.TB, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if l := leftovers(t, d); len(l) > 0 {
			t.Errorf("leftovers in %s: %v", d, l)
		}
	}
}

// eventually polls cond every 25 ms until it returns true or timeout
// passes; then it fails the test with msg and the last detail.
func eventually(t testing.TB, timeout time.Duration, msg string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s: %s", msg, timeout, detail)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// daemonProc is a `watcher run` subprocess.
type daemonProc struct {
	t      testing.TB
	cmd    *exec.Cmd
	Addr   string // http_listen
	Config string
	stderr *testlog.Buffer
	stdout *testlog.Buffer
	done   chan struct{}
	err    error // set when done is closed
}

// startDaemon starts `watcher run --config config`; addr is the config's
// http_listen (may be empty). The process is killed at the end of the test
// if it still runs, and its stderr is logged when the test failed.
func startDaemon(t testing.TB, config, addr string) *daemonProc {
	t.Helper()
	cmd := exec.Command(watcherBin, "run", "--config", config)
	d := &daemonProc{t: t, cmd: cmd, Addr: addr, Config: config, stderr: &testlog.Buffer{},
		stdout: &testlog.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = d.stdout, d.stderr
	cmd.Dir = filepath.Dir(config)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start watcher run: %v", err)
	}
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("watcher run stderr:\n%s", d.stderr.String())
		}
	})
	return d
}

// Stderr is what the daemon logged so far.
func (d *daemonProc) Stderr() string { return d.stderr.String() }

// Signal sends sig to the daemon.
func (d *daemonProc) Signal(sig os.Signal) {
	d.t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		d.t.Fatalf("signal %v: %v", sig, err)
	}
}

// Exited reports whether the process has exited.
func (d *daemonProc) Exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// StopClean sends SIGTERM and fails the test unless the daemon exits 0
// within 15 s.
func (d *daemonProc) StopClean() {
	d.t.Helper()
	d.Signal(syscall.SIGTERM)
	if code := d.Wait(15 * time.Second); code != 0 {
		d.t.Fatalf("SIGTERM: exit %d, want 0\n%s", code, d.Stderr())
	}
}

// Wait waits up to timeout for the process to exit and returns its exit
// code; it fails the test on timeout.
func (d *daemonProc) Wait(timeout time.Duration) int {
	d.t.Helper()
	select {
	case <-d.done:
	case <-time.After(timeout):
		d.t.Fatalf("watcher run did not exit within %s\nstderr:\n%s", timeout, d.Stderr())
	}
	var ee *exec.ExitError
	if errors.As(d.err, &ee) {
		return ee.ExitCode()
	}
	if d.err != nil {
		d.t.Fatalf("watcher run: %v", d.err)
	}
	return 0
}

// WaitLog waits until the daemon's stderr contains every one of substrs on
// one line, and returns that line.
func (d *daemonProc) WaitLog(timeout time.Duration, substrs ...string) string {
	d.t.Helper()
	var found string
	eventually(d.t, timeout, fmt.Sprintf("log line with %q", substrs), func() (bool, string) {
		if line, ok := findLogLine(d.Stderr(), substrs...); ok {
			found = line
			return true, ""
		}
		if d.Exited() {
			d.t.Fatalf("watcher run exited while waiting for a log line with %q\nstderr:\n%s", substrs, d.Stderr())
		}
		return false, "not logged yet"
	})
	return found
}

// findLogLine returns the first line of log that contains every substr.
func findLogLine(log string, substrs ...string) (string, bool) {
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
next:
	for sc.Scan() {
		line := sc.Text()
		for _, s := range substrs {
			if !strings.Contains(line, s) {
				continue next
			}
		}
		return line, true
	}
	return "", false
}

var httpClient = &http.Client{Timeout: 5 * time.Second}

// Get fetches path from the daemon's HTTP server and returns status and
// body; err is a transport error.
func (d *daemonProc) Get(path string) (int, string, error) {
	resp, err := httpClient.Get("http://" + d.Addr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// WaitReady waits until /readyz answers 200.
func (d *daemonProc) WaitReady(timeout time.Duration) {
	d.t.Helper()
	eventually(d.t, timeout, "/readyz 200", func() (bool, string) {
		if d.Exited() {
			d.t.Fatalf("watcher run exited before it was ready\nstderr:\n%s", d.Stderr())
		}
		code, body, err := d.Get("/readyz")
		if err != nil {
			return false, err.Error()
		}
		return code == 200, fmt.Sprintf("%d %s", code, body)
	})
}

// statusDoc is the part of /status the tests read.
type statusDoc struct {
	Node    string         `json:"node"`
	Ready   bool           `json:"ready"`
	Targets []targetStatus `json:"targets"`
}

type targetStatus struct {
	Name       string          `json:"name"`
	Backend    string          `json:"backend"`
	SizeBytes  int64           `json:"size_bytes"`
	State      string          `json:"state"`
	Compacting bool            `json:"compacting"`
	LastReport json.RawMessage `json:"last_report"`
}

// report is a compaction report as docs/reports.md documents it.
type report struct {
	Target         string  `json:"target"`
	Backend        string  `json:"backend"`
	Trigger        string  `json:"trigger"`
	BeforeRecords  int64   `json:"before_records"`
	AfterRecords   int64   `json:"after_records"`
	BeforeBytes    *int64  `json:"before_bytes"`
	AfterBytes     *int64  `json:"after_bytes"`
	RemovedRecords int64   `json:"removed_records"`
	ReclaimedBytes *int64  `json:"reclaimed_bytes"`
	StartedAt      string  `json:"started_at"`
	DurationMS     float64 `json:"duration_ms"`
	DryRun         bool    `json:"dry_run"`
	Error          string  `json:"error"`
	// Extensions.
	Dropped struct {
		// Count: records of rotating chunks beyond max_files.
		Count      int64 `json:"count"`
		Invalid    int64 `json:"invalid"`
		Unexamined int64 `json:"unexamined"`
	} `json:"dropped"`
	AppendedDuring int64    `json:"appended_during"`
	Notes          []string `json:"notes"`
	// Method is how storage was changed: in_place, copy or none.
	Method string `json:"method"`
}

// reportFields are the keys every report must have (docs/reports.md).
var reportFields = []string{"target", "backend", "trigger", "before_records", "after_records",
	"before_bytes", "after_bytes", "removed_records", "reclaimed_bytes", "started_at",
	"duration_ms", "dry_run", "error"}

// parseReport checks that raw is one report object with every documented
// field and consistent derived fields, and decodes it.
func parseReport(t testing.TB, raw json.RawMessage) report {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("report is not a JSON object: %v\n%s", err, raw)
	}
	for _, f := range reportFields {
		if _, ok := m[f]; !ok {
			t.Errorf("report lacks field %q: %s", f, raw)
		}
	}
	var r report
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("report fields have the wrong types: %v\n%s", err, raw)
	}
	if _, err := time.Parse(time.RFC3339, r.StartedAt); err != nil {
		t.Errorf("started_at %q is not RFC 3339: %v", r.StartedAt, err)
	}
	if r.Error == "" {
		if r.RemovedRecords != r.BeforeRecords-r.AfterRecords {
			t.Errorf("removed_records %d != before %d - after %d", r.RemovedRecords, r.BeforeRecords, r.AfterRecords)
		}
		if r.BeforeBytes != nil && r.AfterBytes != nil {
			if r.ReclaimedBytes == nil || *r.ReclaimedBytes != *r.BeforeBytes-*r.AfterBytes {
				t.Errorf("reclaimed_bytes %v != before_bytes %d - after_bytes %d", r.ReclaimedBytes, *r.BeforeBytes, *r.AfterBytes)
			}
		}
		if r.DurationMS < 0 {
			t.Errorf("duration_ms %v is negative", r.DurationMS)
		}
	}
	return r
}

// parseReports decodes `watcher compact --json` output: one JSON array of
// reports.
func parseReports(t testing.TB, stdout string) []report {
	t.Helper()
	var raws []json.RawMessage
	dec := json.NewDecoder(strings.NewReader(stdout))
	if err := dec.Decode(&raws); err != nil {
		t.Fatalf("stdout is not a JSON array: %v\n%s", err, stdout)
	}
	if dec.More() {
		t.Fatalf("stdout has more than one JSON value:\n%s", stdout)
	}
	out := make([]report, 0, len(raws))
	for _, raw := range raws {
		out = append(out, parseReport(t, raw))
	}
	return out
}

// fileID is what a dry run must not change about a file.
type fileID struct {
	size  int64
	mtime time.Time
	ino   uint64
}

func statID(t testing.TB, path string) fileID {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fileID{size: fi.Size(), mtime: fi.ModTime(), ino: fi.Sys().(*syscall.Stat_t).Ino}
}

// splitLines splits data into lines, each with its newline (the last one
// may have none).
func splitLines(data []byte) [][]byte {
	var out [][]byte
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			out = append(out, data)
			break
		}
		out = append(out, data[:i+1])
		data = data[i+1:]
	}
	return out
}

// countLines counts the newline-terminated lines in the target file at
// path, read with readTarget: a filler line first in the file, left by an
// in-place compaction, is not counted.
func countLines(t testing.TB, path string) int {
	t.Helper()
	return bytes.Count(readTarget(t, path), []byte("\n"))
}

// genRecords returns n Papyra event records, one per line, with sequence
// numbers from first and timestamps one second apart ending at end.
func genRecords(first, n int, end float64, payloadBytes int) []byte {
	var b bytes.Buffer
	pad := strings.Repeat("x", payloadBytes)
	for i := range n {
		seq := first + i
		ts := end - float64(n-1-i)
		fmt.Fprintf(&b, `{"kind":"event","system_id":"local","actor_address":"actor-%d","event_type":"tick","payload":{"seq":%d,"pad":"%s"},"timestamp":%.1f}`+"\n",
			seq%97, seq, pad, ts)
	}
	return b.Bytes()
}
