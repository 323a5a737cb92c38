package integration

// The backup guide, end to end: a daemon on NATS with a json and a rotating
// target, a live Papyra-style writer on each (the rotating one rotating as
// Papyra does), the watcher compacting both again and again, and the
// nightly tar script of docs/backup.md run as it is written (only its
// NATS URL, node and output path replaced) with the built binary.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/papyra/watcher/internal/testlog"
	"github.com/papyra/watcher/internal/testutil"
)

// backupScript returns the nightly tar script of docs/backup.md with its
// NATS URL, node and output file replaced; it fails when the guide no
// longer has the lines it replaces.
func backupScript(t *testing.T, natsURL, node, out string) string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join(repoRoot, "docs", "backup.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)## Nightly backup with tar.*?```sh\n(.*?)```").FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/backup.md: no sh block under \"Nightly backup with tar\"")
	}
	script := string(m[1])
	for _, r := range []struct{ re, with string }{
		{`(?m)^NATS=.*$`, "NATS=" + natsURL},
		{`(?m)^NODE=.*$`, "NODE=" + node},
		{`(?m)^OUT=.*$`, "OUT=" + out},
	} {
		re := regexp.MustCompile(r.re)
		if !re.MatchString(script) {
			t.Fatalf("docs/backup.md script has no line %s:\n%s", r.re, script)
		}
		script = re.ReplaceAllLiteralString(script, r.with)
	}
	return script
}

// pacedWriter drives a clwWriter at a moderate pace (a few thousand
// records a second) so that the set rotates many times a second without
// outrunning the compactions.
func pacedWriter(path string, maxBytes int64, maxFiles int) *clwWriter {
	return startCLWWriterPaced(path, maxBytes, maxFiles, 8)
}

// backupSeqs checks that data is whole records of the writer and returns
// their sequence numbers in order. The backup may begin with the filler
// line an in-place compaction leaves first in a file (trimFiller): a
// rotating set has one only at the head of its oldest file, which is the
// head of the backup; one anywhere else fails.
func backupSeqs(t *testing.T, name string, data []byte) []int64 {
	t.Helper()
	if len(data) > 0 && data[len(data)-1] != '\n' {
		t.Fatalf("%s: the backup ends in a partial line: %q", name, clip(data[max(0, len(data)-200):]))
	}
	data = trimFiller(t, name+" (the backup's file)", data)
	var out []int64
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var rec struct {
			Payload struct {
				Seq *int64 `json:"seq"`
			} `json:"payload"`
		}
		if json.Unmarshal(sc.Bytes(), &rec) != nil || rec.Payload.Seq == nil {
			t.Fatalf("%s: not a whole record: %q", name, clip(sc.Bytes()))
		}
		out = append(out, *rec.Payload.Seq)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// wantContiguous fails unless seqs is one run lo, lo+1, … that reaches
// last.
func wantContiguous(t *testing.T, name string, seqs []int64, last int64) {
	t.Helper()
	if len(seqs) == 0 {
		t.Fatalf("%s: the backup holds no record (want up to %d)", name, last)
	}
	for i := 1; i < len(seqs); i++ {
		if seqs[i] != seqs[i-1]+1 {
			t.Fatalf("%s: the backup is not one contiguous run: record %d follows %d (at line %d of %d)", name, seqs[i], seqs[i-1], i+1, len(seqs))
		}
	}
	if hi := seqs[len(seqs)-1]; hi < last {
		t.Fatalf("%s: the backup ends at record %d, before %d, the last written before the request", name, hi, last)
	}
	t.Logf("%s: backup holds records %d..%d (%d), last before the request %d", name, seqs[0], seqs[len(seqs)-1], len(seqs), last)
}

// snapDirs lists the snapshot directories in dir.
func snapDirs(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, ".*.watcher-snap-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestBackupSnapshotLiveTar(t *testing.T) {
	ns := testutil.StartNATS(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	const node = "it-node"
	const maxBytes, maxFiles = 48 << 10, 16
	cfg := writeConfig(t, dir, strings.Replace(daemonHeader(addr, `snapshot_ttl = "2s"`, ""),
		"[triggers.timer]\ninterval = \"0s\"", "[triggers.timer]\ninterval = \"1s\"\njitter = \"0%\"", 1)+
		fmt.Sprintf("\n[nats]\nurl = %q\n", ns.URL)+
		jsonTarget("events", "events.ndjson", 4000)+
		fmt.Sprintf(`
[[target]]
name = "audit"
backend = "rotating"
path = "data/audit.log"
max_bytes = %d
max_files = %d
[target.retention]
max_records = 2000
`, maxBytes, maxFiles))
	// Compact on every 10 kB of growth. The rotating set's retention
	// (2000 records, about 420 kB) fits in fewer than max_files segments, so
	// the writer keeps rotating after compactions.
	cfgText, _ := os.ReadFile(cfg)
	cfgText = bytes.Replace(cfgText, []byte("min_bytes = 10000\nmin_ratio = 0.5"), []byte("min_bytes = 10000\nmin_ratio = 0"), 1)
	writeFile(t, cfg, cfgText)

	jw := pacedWriter(filepath.Join(data, "events.ndjson"), 0, 0)
	rw := pacedWriter(filepath.Join(data, "audit.log"), maxBytes, maxFiles)
	stopped := false
	stopWriters := func() {
		if !stopped {
			stopped = true
			jw.finish(t)
			rw.finish(t)
		}
	}
	defer stopWriters()

	d := startDaemon(t, cfg, addr)
	d.WaitReady(20 * time.Second)

	compactions := func() map[string]float64 {
		_, body, err := d.Get("/metrics")
		if err != nil {
			t.Fatal(err)
		}
		s := parseMetrics(body)
		out := map[string]float64{}
		for _, tg := range []string{"events", "audit"} {
			out[tg], _ = metricValue(s, "papyra_compactor_compactions_total", map[string]string{"target": tg, "result": "success"})
		}
		return out
	}
	// The watcher compacts both targets while the writers go.
	eventually(t, 60*time.Second, "two compactions of each target before the backup", func() (bool, string) {
		c := compactions()
		return c["events"] >= 2 && c["audit"] >= 2 && rw.rotated.Load() >= 3, fmt.Sprint(c, " rotations ", rw.rotated.Load())
	})

	// A wrapper named watcher runs the built binary. Around pre-backup it
	// lets the test note the writers' counts just before the request and
	// hold the script after the reply until the watcher has compacted each
	// target twice more (the backup window).
	bin := t.TempDir()
	gate := t.TempDir()
	wrapper := fmt.Sprintf(`#!/bin/sh
if [ "$1 $2" = "request pre-backup" ]; then
  : > %[2]s/requesting
  while [ ! -e %[2]s/counted ]; do sleep 0.02; done
  %[1]s "$@"; rc=$?
  : > %[2]s/replied
  while [ ! -e %[2]s/go ]; do sleep 0.02; done
  exit $rc
fi
exec %[1]s "$@"
`, watcherBin, gate)
	writeFile(t, filepath.Join(bin, "watcher"), []byte(wrapper))
	if err := os.Chmod(filepath.Join(bin, "watcher"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "backup.tar")
	script := filepath.Join(t.TempDir(), "nightly.sh")
	writeFile(t, script, []byte(backupScript(t, ns.URL, node, out)))

	cmd := exec.Command("sh", script)
	cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	var stdout, stderr testlog.Buffer // read while the script writes
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var scriptDone atomic.Bool
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait(); scriptDone.Store(true) }()
	defer func() {
		if !scriptDone.Load() {
			cmd.Process.Kill()
		}
	}()
	exists := func(name string) bool { _, err := os.Stat(filepath.Join(gate, name)); return err == nil }
	eventually(t, 30*time.Second, "the script sends pre-backup", func() (bool, string) {
		return exists("requesting") || scriptDone.Load(), stderr.String()
	})
	lastJSON, lastRot := jw.written.Load()-1, rw.written.Load()-1
	writeFile(t, filepath.Join(gate, "counted"), nil)
	eventually(t, 60*time.Second, "the pre-backup reply", func() (bool, string) {
		return exists("replied") || scriptDone.Load(), stderr.String()
	})
	if scriptDone.Load() {
		t.Fatalf("the script ended early: %v\nstdout:\n%s\nstderr:\n%s", <-waitErr, stdout.String(), stderr.String())
	}
	snaps := snapDirs(t, data)
	if len(snaps) != 2 {
		t.Fatalf("after pre-backup --snapshot: snapshot directories %v, want one per target", snaps)
	}
	// The backup window: two more compactions of each target, and more
	// rotations, before the script copies anything.
	base, rot := compactions(), rw.rotated.Load()
	eventually(t, 60*time.Second, "two compactions of each target in the backup window", func() (bool, string) {
		c := compactions()
		return c["events"] >= base["events"]+2 && c["audit"] >= base["audit"]+2 && rw.rotated.Load() >= rot+2,
			fmt.Sprint(base, " -> ", c, " rotations ", rot, " -> ", rw.rotated.Load(), " ", lsSizes(data))
	})
	writeFile(t, filepath.Join(gate, "go"), nil)
	select {
	case err := <-waitErr:
		if err != nil {
			t.Fatalf("the backup script failed: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("the backup script did not finish\nstderr:\n%s", stderr.String())
	}
	// Compactions went on while the copy ran, too; the writers stop now.
	after := compactions()
	stopWriters()
	t.Logf("compactions: before the window %v, after the backup %v; rotations %d", base, after, rw.rotated.Load())

	// post-backup (the script's trap) removed the snapshot.
	if left := snapDirs(t, data); len(left) != 0 {
		t.Errorf("after the script's post-backup: snapshot directories left %v\nscript stdout:\n%s\nscript stderr:\n%s", left, stdout.String(), stderr.String())
	}

	restore := t.TempDir()
	if o, err := exec.Command("tar", "-xf", out, "-C", restore).CombinedOutput(); err != nil {
		t.Fatalf("tar -xf: %v\n%s", err, o)
	}
	for _, c := range []struct {
		target string
		last   int64
	}{{"events", lastJSON}, {"audit", lastRot}} {
		b, err := os.ReadFile(filepath.Join(restore, c.target+".ndjson"))
		if err != nil {
			t.Fatalf("the backup lacks %s: %v", c.target, err)
		}
		wantContiguous(t, c.target, backupSeqs(t, c.target, b), c.last)
	}

	// A forgotten snapshot expires after snapshot_ttl (2 s here).
	r := runWatcher(t, 60*time.Second, "request", "pre-backup", "--snapshot", "--nats", ns.URL, "--node", node, "--json")
	wantCode(t, r, 0, "pre-backup --snapshot")
	if got := snapDirs(t, data); len(got) != 2 {
		t.Fatalf("snapshot directories after the second pre-backup: %v\n%s", got, r)
	}
	// Its directories and then its record go.
	eventually(t, 40*time.Second, "the forgotten snapshot expires", func() (bool, string) {
		recs, _ := filepath.Glob(filepath.Join(dir, "state", "snapshots", "*.json"))
		return len(snapDirs(t, data)) == 0 && len(recs) == 0, fmt.Sprint(snapDirs(t, data), recs)
	})
	d.StopClean()
}

func lsSizes(dir string) string {
	ents, _ := os.ReadDir(dir)
	var b strings.Builder
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			fmt.Fprintf(&b, "%s=%d ", e.Name(), fi.Size())
		}
	}
	return b.String()
}
