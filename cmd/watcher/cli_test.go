package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/papyra/watcher/executor"
	"github.com/papyra/watcher/internal/testutil"
	"github.com/papyra/watcher/policy"
	"github.com/papyra/watcher/triggers"
)

// run runs the command line args and returns its exit status, stdout and
// stderr.
func run(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := mainWith(args, &out, &errb)
	return code, out.String(), errb.String()
}

// TestHelpExitsZero: -h and --help print the usage and exit 0 at the top
// level and on every subcommand.
func TestHelpExitsZero(t *testing.T) {
	for _, cmd := range [][]string{nil, {"run"}, {"compact"}, {"validate"}, {"status"}, {"request"}, {"version"}} {
		for _, h := range []string{"-h", "--help"} {
			args := append(append([]string(nil), cmd...), h)
			code, _, stderr := run(args...)
			if code != exitOK {
				t.Errorf("watcher %s: exit %d, want 0\n%s", strings.Join(args, " "), code, stderr)
			}
			if !strings.Contains(stderr, "Usage") {
				t.Errorf("watcher %s printed no usage: %q", strings.Join(args, " "), stderr)
			}
		}
	}
	// The usage of the commands that read a config lists the environment
	// overrides.
	for _, cmd := range []string{"run", "compact", "validate"} {
		_, _, stderr := run(cmd, "-h")
		for _, v := range []string{"WATCHER_NODE", "WATCHER_NATS_TOKEN", "WATCHER_NATS_PASSWORD", "WATCHER_REDIS_PASSWORD", "WATCHER_REDIS_PASSWORD_<TARGET>"} {
			if !strings.Contains(stderr, v) {
				t.Errorf("watcher %s -h does not mention %s", cmd, v)
			}
		}
	}
}

// TestStrayArgumentsRefused: a command that takes no argument refuses one
// with exit 2, naming it, instead of ignoring it.
func TestStrayArgumentsRefused(t *testing.T) {
	cfg, _ := writeTarget(t, 10)
	for _, args := range [][]string{
		{"run", "--config", cfg, "extra"},
		{"run", "extra"},
		{"compact", "--config", cfg, "extra"},
		{"status", "extra"},
		{"version", "extra"},
		{"validate", cfg, "extra"},
	} {
		code, _, stderr := run(args...)
		if code != exitBadConfig {
			t.Errorf("watcher %s: exit %d, want 2", strings.Join(args, " "), code)
		}
		if !strings.Contains(stderr, `unexpected argument "extra"`) || !strings.Contains(stderr, "Usage: watcher "+args[0]) {
			t.Errorf("watcher %s: stderr does not name the argument with the usage:\n%s", strings.Join(args, " "), stderr)
		}
	}
}

// TestValidatePositionalConfig: `watcher validate FILE` validates FILE,
// not ./config.toml; with --config as well it is refused.
func TestValidatePositionalConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	bad := filepath.Join(dir, "other.toml")
	os.WriteFile(good, []byte("[[target]]\nname = \"a\"\nbackend = \"memory\"\n"), 0o644)
	os.WriteFile(bad, []byte("[watcher]\nbogus = 1\n"), 0o644)

	code, _, stderr := run("validate", bad)
	if code != exitBadConfig || !strings.Contains(stderr, bad) || !strings.Contains(stderr, `line 2: unknown key "watcher.bogus"`) {
		t.Errorf("validate %s: exit %d, stderr %q; want 2 naming its problem", bad, code, stderr)
	}
	code, stdout, stderr := run("validate", good)
	if code != exitOK || !strings.HasPrefix(stdout, good+": valid") {
		t.Errorf("validate %s: exit %d, stdout %q, stderr %q", good, code, stdout, stderr)
	}
	// The file may also come before flags of the command.
	code, stdout, _ = run("validate", good, "--config", good)
	if code != exitBadConfig {
		t.Errorf("validate FILE --config FILE: exit %d, want 2 (%q)", code, stdout)
	}
	code, _, stderr = run("validate", "--config", good, bad)
	if code != exitBadConfig || !strings.Contains(stderr, "both --config "+good+" and the argument "+bad) {
		t.Errorf("validate --config A B: exit %d, stderr %q", code, stderr)
	}
}

// TestValidatePrintsErrorsNotWarnings: for an invalid file, validate prints
// the errors and no warning (a warning built from an invalid value came
// first before).
func TestValidatePrintsErrorsNotWarnings(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.toml")
	os.WriteFile(path, []byte("[[target]]\nname = \"a\"\nbackend = \"json\"\npath = \"nodir/a.ndjson\"\n[target.retention]\nmax_age_seconds = -1\n"), 0o644)
	code, _, stderr := run("validate", path)
	if code != exitBadConfig {
		t.Fatalf("exit %d", code)
	}
	if !strings.HasPrefix(stderr, "invalid config: ") || strings.Contains(stderr, "warning") {
		t.Errorf("stderr %q: want the errors only", stderr)
	}
}

// TestVersionFlag: `watcher --version` prints what `watcher version`
// prints, with the version and revision stamped by -ldflags -X.
func TestVersionFlag(t *testing.T) {
	defer func(v, r string) { version, revision = v, r }(version, revision)
	version, revision = "v1.2.3", "0123abcd"
	_, want, _ := run("version")
	if !strings.HasPrefix(want, "watcher v1.2.3 (commit 0123abcd") {
		t.Errorf("version: %q", want)
	}
	for _, flag := range []string{"--version", "-version"} {
		code, got, stderr := run(flag)
		if code != exitOK || got != want {
			t.Errorf("watcher %s: exit %d, %q (stderr %q); want %q", flag, code, got, stderr, want)
		}
	}
	// Not stamped: the toolchain's build info, or dev/unknown.
	version, revision = "", ""
	if v, r := buildVersion(); v == "" || r == "" {
		t.Errorf("buildVersion() = %q, %q", v, r)
	}
}

// TestJSONLogDurationsAsText: durations in JSON logs are "1.5s", not
// nanoseconds.
func TestJSONLogDurationsAsText(t *testing.T) {
	for _, format := range []string{"json", "text"} {
		var buf bytes.Buffer
		log := newLogger(WatcherConfig{LogLevel: "info", LogFormat: format}, &buf)
		log.Info("x", "took", 1500*time.Millisecond, slog.Group("g", "wait", 2*time.Minute))
		out := buf.String()
		if format == "json" {
			var m map[string]any
			if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
				t.Fatal(err)
			}
			if m["took"] != "1.5s" || m["g"].(map[string]any)["wait"] != "2m0s" {
				t.Errorf("json durations: %s", out)
			}
		} else if !strings.Contains(out, "took=1.5s") || !strings.Contains(out, "g.wait=2m0s") {
			t.Errorf("text durations: %s", out)
		}
	}
}

// TestProgressClearedBeforeLogLines: a log line written while the progress
// line is drawn erases it first and draws it again after, so that the two
// never share a line ("… ETA 0stime=… level=INFO").
func TestProgressClearedBeforeLogLines(t *testing.T) {
	var term bytes.Buffer
	p := &progress{w: &term}
	log := slog.New(slog.NewTextHandler(p.logWriter(&term), nil))
	p.update("events", 10, 100)
	log.Info("compaction", "target", "events")
	got := term.String()
	i := strings.Index(got, "time=")
	if i < 0 || !strings.HasSuffix(got[:i], "\r\033[K") {
		t.Errorf("the log line does not start on a cleared line: %q", got)
	}
	if !strings.HasSuffix(got, "\r\033[Kevents: 10 B / 100 B") {
		t.Errorf("the progress line is not drawn again after the log line: %q", got)
	}
	// Without a progress line drawn, log lines pass unchanged.
	p.clear()
	term.Reset()
	log.Info("after")
	if strings.Contains(term.String(), "\033[") {
		t.Errorf("escape codes without a progress line: %q", term.String())
	}
}

// TestCompactProgressAndLogsOnOneTerminal: with stdout and stderr on one
// terminal, no log line of `watcher compact` starts on the progress line.
func TestCompactProgressAndLogsOnOneTerminal(t *testing.T) {
	cfg, _ := writeTarget(t, 50000)
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatalf("open pty: %v", err)
	}
	defer ptmx.Close()
	got := make(chan string)
	go func() {
		b, _ := io.ReadAll(ptmx)
		got <- string(b)
	}()
	code := runCompact(context.Background(), []string{"--config", cfg}, tty, tty)
	tty.Close()
	out := <-got
	if code != 0 {
		t.Fatalf("exit %d: %q", code, out)
	}
	if !strings.Contains(out, "\r\033[Kevents: ") || !strings.Contains(out, "level=INFO msg=compaction") {
		t.Fatalf("no progress line or no log line: %q", out)
	}
	cleared := 0
	for _, m := range regexp.MustCompile(`time=`).FindAllStringIndex(out, -1) {
		before := out[:m[0]]
		switch {
		case strings.HasSuffix(before, "\033[K"):
			cleared++
		case !strings.HasSuffix(before, "\n"):
			t.Errorf("a log line continues another line: %q", before[max(0, len(before)-60):])
		}
	}
	if cleared == 0 {
		t.Errorf("no log line came while the progress line was drawn: the test tests nothing: %q", out)
	}
}

// TestCompactWarnsOfMissingFile: compacting a target whose file does not
// exist says so on stderr, naming the path, instead of only "0 → 0".
func TestCompactWarnsOfMissingFile(t *testing.T) {
	cfg, data := writeTarget(t, 10)
	if err := os.Remove(data); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := runCompact(context.Background(), []string{"--config", cfg}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if !strings.Contains(errb.String(), data+" does not exist: nothing to compact (check its path)") {
		t.Errorf("stderr does not warn of %s: %q", data, errb.String())
	}
}

// gauge returns the value of the gauge name of m without labels, or -1
// when it is absent.
func gauge(t *testing.T, m *executor.Metrics, name string) float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, s := range mf.GetMetric() {
				return s.GetGauge().GetValue()
			}
		}
	}
	return -1
}

// TestNATSConnectedFollowsTheConnection: papyra_compactor_nats_connected
// turns 1 as soon as the connection is up and 0 as soon as it is lost,
// not at the next 15 s refresh.
func TestNATSConnectedFollowsTheConnection(t *testing.T) {
	srv := testutil.StartNATS(t)
	n, err := triggers.NewNATS(triggers.NATSConfig{URL: srv.URL, SubjectPrefix: requestPrefix(), Node: "n1",
		ReconnectWait: 50 * time.Millisecond, ReconnectMaxWait: 100 * time.Millisecond}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{nats: n, metrics: executor.NewMetrics("n1")}
	ctx, cancel := context.WithCancel(context.Background())
	stop := d.followNATS(ctx)
	runDone := make(chan error, 1)
	go func() { runDone <- n.Run(ctx, func(policy.Signal) {}) }()
	defer func() {
		cancel()
		stop()
		<-runDone
	}()
	waitGauge := func(want float64) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for gauge(t, d.metrics, "papyra_compactor_nats_connected") != want {
			if time.Now().After(deadline) {
				t.Fatalf("nats_connected = %v after 3s, want %v", gauge(t, d.metrics, "papyra_compactor_nats_connected"), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitGauge(1)
	srv.Shutdown()
	waitGauge(0)
	srv.Start()
	waitGauge(1)
}
