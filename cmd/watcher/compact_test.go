package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/creack/pty"
)

// writeTarget writes a config with one json target holding n records.
func writeTarget(t *testing.T, n int) (cfgPath, dataPath string) {
	t.Helper()
	dir := t.TempDir()
	dataPath = filepath.Join(dir, "events.ndjson")
	var b bytes.Buffer
	for i := range n {
		fmt.Fprintf(&b, `{"kind": "event", "system_id": "local", "actor_address": "local://w/%d", "event_type": "Tick", "payload": {"seq": %d}, "timestamp": %d.0}`+"\n", i%7, i, 1795590000+i)
	}
	if err := os.WriteFile(dataPath, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	cfgPath = filepath.Join(dir, "c.toml")
	cfg := fmt.Sprintf("[watcher]\nstate_dir = %q\nhttp_listen = \"\"\n[[target]]\nname = \"events\"\nbackend = \"json\"\npath = %q\n[target.retention]\nmax_records = %d\n", filepath.Join(dir, "state"), dataPath, n/2)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfgPath, dataPath
}

func TestCompactProgressOnlyOnTerminal(t *testing.T) {
	cfg, _ := writeTarget(t, 20000)
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatalf("open pty: %v", err)
	}
	defer ptmx.Close()
	got := make(chan string)
	go func() {
		b, _ := io.ReadAll(ptmx) // returns when the tty side is closed
		got <- string(b)
	}()
	var errb bytes.Buffer
	code := runCompact(context.Background(), []string{"--config", cfg}, tty, &errb)
	tty.Close()
	out := <-got
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out, "\r\033[Kevents: ") || !strings.Contains(out, " / ") {
		t.Fatalf("no progress line on a terminal: %q", out)
	}
	if !strings.Contains(out, "20,000 → 10,000 records") {
		t.Fatalf("no summary on a terminal: %q", out)
	}

	cfg, _ = writeTarget(t, 20000)
	var plain bytes.Buffer
	if code := runCompact(context.Background(), []string{"--config", cfg}, &plain, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if strings.Contains(plain.String(), "\r") || strings.Contains(plain.String(), "\033[") {
		t.Fatalf("progress drawn when stdout is not a terminal: %q", plain.String())
	}
	if !strings.Contains(plain.String(), "events") || !strings.Contains(plain.String(), "10,000 records") {
		t.Fatalf("summary: %q", plain.String())
	}
}

func TestCompactUsageErrors(t *testing.T) {
	cfg, data := writeTarget(t, 10)
	before, _ := os.ReadFile(data)
	var out, errb bytes.Buffer
	if code := runCompact(context.Background(), []string{"--config", cfg, "--target", "nope"}, &out, &errb); code != 2 {
		t.Fatalf("unknown target: exit %d", code)
	}
	if !strings.Contains(errb.String(), "unknown target(s): nope") {
		t.Errorf("stderr %q", errb.String())
	}
	if code := runCompact(context.Background(), []string{"--config", cfg, "--now", "yesterday"}, &out, &errb); code != 2 {
		t.Fatalf("bad --now: exit %d", code)
	}
	after, _ := os.ReadFile(data)
	if !bytes.Equal(before, after) {
		t.Fatal("a refused command changed the data")
	}
}

// TestCompactWarnsOnlyAboutSelectedTargets: with --target, the config's
// warnings about the other targets (a missing directory, no retention) are
// not printed; those about the selected target and the config as a whole
// are.
func TestCompactWarnsOnlyAboutSelectedTargets(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.toml")
	text := fmt.Sprintf("[watcher]\nstate_dir = %q\nhttp_listen = \"\"\n", filepath.Join(dir, "state")) +
		"[[target]]\nname = \"a\"\nbackend = \"json\"\npath = \"a.ndjson\"\n[target.retention]\nmax_records = 1\n" +
		"[[target]]\nname = \"b\"\nbackend = \"json\"\npath = \"nodir-b/b.ndjson\"\n[target.retention]\nmax_records = 1\n" +
		"[[target]]\nname = \"c\"\nbackend = \"json\"\npath = \"nodir-c/c.ndjson\"\n"
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "a.ndjson"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WATCHER_REDIS_PASSWORD_NOPE", "x") // a warning about the config as a whole
	for _, c := range []struct {
		only          []string
		want, wantNot []string
	}{
		{[]string{"a"}, []string{"WATCHER_REDIS_PASSWORD_NOPE"}, []string{`target \"b\"`, `target \"c\"`, "nodir"}},
		{[]string{"b"}, []string{`target \"b\": the directory of path`, "WATCHER_REDIS_PASSWORD_NOPE"}, []string{`target \"c\"`, "nodir-c"}},
		{nil, []string{`target \"b\": the directory`, `target \"c\": the directory`, `target \"c\": no retention`}, nil},
	} {
		args := []string{"--config", cfg}
		for _, n := range c.only {
			args = append(args, "--target", n)
		}
		var out, errb bytes.Buffer
		if code := runCompact(context.Background(), args, &out, &errb); code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errb.String())
		}
		for _, w := range c.want {
			if !strings.Contains(errb.String(), w) {
				t.Errorf("%v: stderr lacks %q:\n%s", c.only, w, errb.String())
			}
		}
		for _, w := range c.wantNot {
			if strings.Contains(errb.String(), w) {
				t.Errorf("%v: stderr has %q, about a target not selected:\n%s", c.only, w, errb.String())
			}
		}
	}
}
