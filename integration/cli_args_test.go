package integration

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/papyra/watcher/internal/testlog"
)

// TestCLIHelpAndVersionFlags: -h and --help exit 0 on every command and at
// the top level; --version prints what `watcher version` prints.
func TestCLIHelpAndVersionFlags(t *testing.T) {
	for _, cmd := range []string{"", "run", "compact", "validate", "status", "request", "version"} {
		for _, h := range []string{"-h", "--help"} {
			args := strings.Fields(cmd + " " + h)
			r := runWatcher(t, 10*time.Second, args...)
			wantCode(t, r, 0, "watcher "+strings.Join(args, " "))
			if !strings.Contains(r.Stderr, "Usage") {
				t.Errorf("watcher %s: no usage:\n%s", strings.Join(args, " "), r.Stderr)
			}
		}
	}
	v := runWatcher(t, 10*time.Second, "version")
	wantCode(t, v, 0, "watcher version")
	fv := runWatcher(t, 10*time.Second, "--version")
	wantCode(t, fv, 0, "watcher --version")
	if fv.Stdout != v.Stdout {
		t.Errorf("watcher --version printed %q, watcher version %q", fv.Stdout, v.Stdout)
	}
}

// TestCLIArguments: extra arguments are refused (exit 2, naming them) by
// run, compact and status; validate takes the config file as its argument.
func TestCLIArguments(t *testing.T) {
	dir := t.TempDir()
	cfg := writeConfig(t, dir, baseConfig)
	other := filepath.Join(dir, "other.toml")
	writeFile(t, other, []byte("[watcher]\nhttp_listen = \"nonsense\"\n"))
	for _, args := range [][]string{
		{"run", "--config", cfg, "extra"},
		{"compact", "--config", cfg, "extra"},
		{"status", "extra"},
	} {
		r := runWatcher(t, 10*time.Second, args...)
		wantCode(t, r, 2, strings.Join(args, " "))
		if !strings.Contains(r.Stderr, `unexpected argument "extra"`) {
			t.Errorf("%s: stderr does not name the argument:\n%s", strings.Join(args, " "), r.Stderr)
		}
	}
	// validate FILE checks FILE (./config.toml is valid, other.toml not).
	cmd := exec.Command(watcherBin, "validate", "other.toml")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("validate other.toml: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), other+`: line 2: watcher.http_listen: "nonsense" is not HOST:PORT`) {
		t.Errorf("validate other.toml:\n%s", out)
	}
	r := runWatcher(t, 10*time.Second, "validate", cfg)
	wantCode(t, r, 0, "validate "+cfg)
}

// TestCLIVersionStamped: a binary built with -ldflags -X main.version and
// -X main.revision prints them (version, --version), labels
// papyra_compactor_info with them and puts the version in /status; its JSON
// logs print durations as text.
func TestCLIVersionStamped(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "watcher")
	build := exec.Command("go", "build", "-o", bin,
		"-ldflags", "-X main.version=v9.8.7 -X main.revision=feedbeef", "./cmd/watcher")
	build.Dir = repoRoot
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build -ldflags: %v\n%s", err, out)
	}
	for _, arg := range []string{"version", "--version"} {
		out, err := exec.Command(bin, arg).Output()
		if err != nil || !strings.HasPrefix(string(out), "watcher v9.8.7 (commit feedbeef, ") {
			t.Errorf("watcher %s: %v %q", arg, err, out)
		}
	}

	dir := t.TempDir()
	addr := freeAddr(t)
	cfg := writeConfig(t, dir, daemonHeader(addr, `log_format = "json"`+"\nshutdown_grace = \"1500ms\"", "")+jsonTarget("events", "events.ndjson", 10))
	writeFile(t, filepath.Join(dir, "data", "events.ndjson"), genRecords(0, 5, 1795600000, 20))
	cmd := exec.Command(bin, "run", "--config", cfg)
	d := &daemonProc{t: t, cmd: cmd, Addr: addr, Config: cfg, stderr: &testlog.Buffer{},
		stdout: &testlog.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = d.stdout, d.stderr
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		if !d.Exited() {
			cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("stderr:\n%s", d.Stderr())
		}
	})
	d.WaitReady(15 * time.Second)
	_, body, err := d.Get("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := metricValue(parseMetrics(body), "papyra_compactor_info",
		map[string]string{"node": "it-node", "version": "v9.8.7", "revision": "feedbeef"}); !ok || v != 1 {
		t.Errorf("papyra_compactor_info{node=it-node,version=v9.8.7,revision=feedbeef} = %v, %v", v, ok)
	}
	_, body, err = d.Get("/status")
	var doc struct {
		Version string `json:"version"`
	}
	if err != nil || json.Unmarshal([]byte(body), &doc) != nil || doc.Version != "v9.8.7" {
		t.Errorf("/status version %q, %v", doc.Version, err)
	}
	d.Signal(syscall.SIGTERM)
	if code := d.Wait(15 * time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit %d", code)
	}
	// The line announcing the shutdown carries the grace period.
	found := false
	for _, line := range strings.Split(d.Stderr(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		if g, ok := m["grace"]; ok {
			found = true
			if g != "1.5s" {
				t.Errorf("grace logged as %v (%T), want \"1.5s\": %s", g, g, line)
			}
		}
	}
	if !found {
		t.Errorf("no JSON log line with grace:\n%s", d.Stderr())
	}
}
