package jsonfile

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
	"github.com/papyra/watcher/backends/rotating"
)

// longLineBytes is the length of the long line of TestLongLineMemory, and
// longLineMaxRSS the peak RSS a compaction (and a scan) of a file holding
// it may reach: a few blocks and the process itself, not the line. Under
// the race detector, whose shadow memory makes RSS meaningless and which
// makes scanning a line byte by byte slow, the line is shorter (still many
// blocks long) and RSS is not checked; .ci/run runs the test once more
// without -race for that.
var (
	longLineBytes  = 64 << 20
	longLineMaxRSS = int64(48 << 20)
)

func init() {
	if raceBuild() {
		longLineBytes = 8 << 20
	}
}

// raceBuild reports whether this binary was built with -race.
func raceBuild() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// longLinePart is one part of a file of a long-line scenario: a file is
// written from its parts, each a short line or a long one.
type longLinePart struct {
	short []byte // a short line, or the head of a long one
	fill  byte   // a long line: head, then fill up to longLineBytes with tail
	tail  []byte
	kept  bool // the compaction keeps it
}

func shortLines(from, to int) longLinePart {
	var b []byte
	for i := from; i < to; i++ {
		b = fmt.Appendf(b, `{"kind": "event", "system_id": "local", "actor_address": "local://worker/%d", "event_type": "ActorStarted", "payload": {"seq": %d}, "timestamp": %d.5}`+"\n", i%7, i, 1795590000+i)
	}
	return longLinePart{short: b, kept: true}
}

var (
	longRecord  = longLinePart{short: []byte(`{"kind": "event", "system_id": "local", "payload": "`), fill: 'x', tail: []byte(`", "timestamp": 1795595000.25}` + "\n"), kept: true}
	longGarbage = longLinePart{fill: 'y', tail: []byte("\n")}
	longPartial = longLinePart{short: []byte(`{"kind": "event", "payload": "`), fill: 'z', kept: true}
	// longPartialDropped is longPartial at the end of a rotating set's
	// active file: left in the old active file by the swap, and dropped
	// there as a crash leftover (the report says so).
	longPartialDropped = longLinePart{short: longPartial.short, fill: 'z'}
)

// writeParts writes parts to path and adds the kept ones to kept.
func writeParts(t *testing.T, path string, kept hash.Hash, parts ...longLinePart) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := writePartsTo(f, kept, parts); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// Old enough for its unterminated line to be settled at once.
	old := time.Now().Add(-time.Minute)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
}

// appendParts appends parts to the file at path, as a writer would.
func appendParts(path string, parts []longLinePart) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	err = writePartsTo(f, nil, parts)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// writePartsTo writes parts to f, through a buffer of 1 MiB, and adds the
// kept ones to kept (when not nil).
func writePartsTo(f io.Writer, kept hash.Hash, parts []longLinePart) error {
	w := bufio.NewWriterSize(f, 1<<20)
	fill := bytes.Repeat([]byte{0}, 1<<20)
	for _, p := range parts {
		var out io.Writer = w
		if p.kept && kept != nil {
			out = io.MultiWriter(w, kept)
		}
		out.Write(p.short)
		if p.fill == 0 {
			continue
		}
		for i := range fill {
			fill[i] = p.fill
		}
		for n := longLineBytes - len(p.short) - len(p.tail); n > 0; n -= len(fill) {
			out.Write(fill[:min(n, len(fill))])
		}
		out.Write(p.tail)
	}
	return w.Flush()
}

type longLineCase struct {
	name      string
	rotating  bool
	files     [][]longLinePart // json: one file; rotating: the active file first
	anomalies []string         // the types a scan reports
	// during is appended while the compaction runs: json (method copy) to
	// the old file just after the swap, where the drain takes it; rotating
	// to the active file after the snapshot, where the catch-up takes it.
	during []longLinePart
}

// junk is a short line that is not a record.
var junk = longLinePart{short: []byte("not json\n")}

var longLineCases = []longLineCase{
	{"json/partial_tail", false, [][]longLinePart{{shortLines(0, 2000), longPartial}}, []string{backends.AnomalyPartialLine}, nil},
	{"json/record", false, [][]longLinePart{{shortLines(0, 1000), longRecord, shortLines(1000, 2000)}}, nil, nil},
	{"json/garbage", false, [][]longLinePart{{shortLines(0, 1000), longGarbage, shortLines(1000, 2000)}}, []string{backends.AnomalyInvalidLine}, nil},
	// More dropped lines than maxHoles (set to 1 in the child): the
	// surviving region is copied line by line.
	{"json/overflow", false, [][]longLinePart{{shortLines(0, 1000), junk, longRecord, junk, shortLines(1000, 2000), junk}},
		[]string{backends.AnomalyInvalidLine, backends.AnomalyInvalidLine, backends.AnomalyInvalidLine}, nil},
	{"rotating/record", true, [][]longLinePart{{shortLines(1500, 2000)}, {shortLines(0, 1000), longRecord, shortLines(1000, 1500)}}, nil, nil},
	{"rotating/partial_tail", true, [][]longLinePart{{shortLines(1500, 2000), longPartialDropped}, {shortLines(0, 1500)}}, []string{backends.AnomalyPartialLine}, nil},
	{"rotating/garbage", true, [][]longLinePart{{shortLines(1500, 2000)}, {shortLines(0, 1000), longGarbage, shortLines(1000, 1500)}}, []string{backends.AnomalyInvalidLine}, nil},
	{"json/drain", false, [][]longLinePart{{shortLines(0, 2000)}}, nil, []longLinePart{longRecord, shortLines(2000, 2100)}},
	{"rotating/catchup", true, [][]longLinePart{{shortLines(1500, 2000)}, {shortLines(0, 1500)}}, nil, []longLinePart{longRecord, shortLines(2000, 2100)}},
}

// TestLongLineMemory scans and compacts files that hold a 64 MiB line (a
// record, garbage, an unterminated last line; json and rotating; or a
// record that arrives during the compaction, for the json drain and the
// rotating catch-up) in a child process, and checks the child's peak RSS,
// what the scan reports, and that every record, the long one included,
// survives byte for byte.
func TestLongLineMemory(t *testing.T) {
	if name := os.Getenv("WATCHER_LONGLINE_CHILD"); name != "" {
		longLineChild(t, name, os.Getenv("WATCHER_LONGLINE_DIR"))
		return
	}
	if testing.Short() {
		t.Skip("writes files with a line of 64 MiB")
	}
	for _, c := range longLineCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel() // each child has its own peak RSS
			dir := t.TempDir()
			if err := os.Mkdir(filepath.Join(dir, "data"), 0o755); err != nil {
				t.Fatal(err)
			}
			kept := sha256.New()
			for i := len(c.files) - 1; i >= 0; i-- { // oldest first
				writeParts(t, longLinePath(c, dir, i), kept, c.files[i]...)
			}
			if err := writePartsTo(io.Discard, kept, c.during); err != nil { // newest
				t.Fatal(err)
			}
			cmd := exec.Command(os.Args[0], "-test.run=^TestLongLineMemory$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), "WATCHER_LONGLINE_CHILD="+c.name, "WATCHER_LONGLINE_DIR="+dir)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("child: %v\n%s", err, out)
			}
			// The child's own peak, as it read it: the rusage of a child
			// started with vfork counts the parent's resident set too.
			var rss int64
			if i := bytes.Index(out, []byte("PEAK_RSS_KIB ")); i >= 0 {
				line, _, _ := bytes.Cut(out[i+len("PEAK_RSS_KIB "):], []byte("\n"))
				kib, err := strconv.ParseInt(string(line), 10, 64)
				if err != nil {
					t.Fatalf("child output: %v\n%s", err, out)
				}
				rss = kib << 10
			} else {
				t.Fatalf("the child did not print its peak RSS\n%s", out)
			}
			t.Logf("peak RSS %.1f MiB with a %d MiB line", float64(rss)/(1<<20), longLineBytes>>20)

			var anomalies []string
			if i := bytes.Index(out, []byte("ANOMALIES ")); i >= 0 {
				line, _, _ := bytes.Cut(out[i+len("ANOMALIES "):], []byte("\n"))
				if err := json.Unmarshal(line, &anomalies); err != nil {
					t.Fatalf("child output: %v\n%s", err, out)
				}
			}
			if strings.Join(anomalies, ",") != strings.Join(c.anomalies, ",") {
				t.Errorf("scan found %v, want %v", anomalies, c.anomalies)
			}
			// What is left, oldest file first, is exactly the kept lines.
			n := 0
			for ; c.rotating || n == 0; n++ {
				if _, err := os.Stat(longLinePath(c, dir, n)); err != nil {
					break
				}
			}
			got := sha256.New()
			for i := n - 1; i >= 0; i-- {
				f, err := os.Open(longLinePath(c, dir, i))
				if err != nil {
					t.Fatal(err)
				}
				_, err = io.Copy(got, f)
				f.Close()
				if err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(got.Sum(nil), kept.Sum(nil)) {
				t.Errorf("the compacted files are not the kept lines (%d files)\n%s", n, out)
			}
			switch {
			case raceBuild():
				t.Log("race detector: peak RSS not checked")
			case rss > longLineMaxRSS:
				t.Errorf("peak RSS %d MiB > %d MiB", rss>>20, longLineMaxRSS>>20)
			}
		})
	}
}

func longLinePath(c longLineCase, dir string, i int) string {
	if !c.rotating {
		return filepath.Join(dir, "data", "events.ndjson")
	}
	// The rotating set's file names: the active file, then .1, .2, ...
	p := filepath.Join(dir, "data", "audit.log")
	if i == 0 {
		return p
	}
	return p + "." + strconv.Itoa(i)
}

// longLineChild is the child of TestLongLineMemory: it scans and
// compacts the files of case name in dir, keeping every record.
func longLineChild(t *testing.T, name, dir string) {
	var c longLineCase
	for _, lc := range longLineCases {
		if lc.name == name {
			c = lc
		}
	}
	ctx := context.Background()
	var b backends.Backend
	var err error
	opts := backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(1 << 40)}, Now: time.Unix(1795600000, 0)}
	var appendErr error
	if c.during != nil && c.rotating {
		// The first progress report comes while the cut is looked for,
		// after the snapshot: what is appended then is caught up.
		var once sync.Once
		opts.Progress = func(int64, int64) {
			once.Do(func() { appendErr = appendParts(longLinePath(c, dir, 0), c.during) })
		}
	}
	if c.during != nil && !c.rotating {
		// Just after the rename: only a writer that opened the old file
		// before can still add to it, and the drain takes that.
		fsx.SetCrashHook(func(p string) error {
			if p == "renamed" {
				appendErr = appendParts(oldLinkName(longLinePath(c, dir, 0), 0), c.during)
			}
			return nil
		})
		defer func() { fsx.SetCrashHook(nil) }()
	}
	if c.rotating {
		// Method copy: the memory of the rewrite is what is measured (in
		// place, the set here would not change at all).
		b, err = rotating.New(rotating.Config{Name: "long", Path: longLinePath(c, dir, 0), MaxBytes: 1 << 30, MaxFiles: 5,
			StateDir: filepath.Join(dir, "state"), Method: backends.MethodCopy})
	} else {
		drainQuiet = time.Millisecond // no writer here
		if name == "json/overflow" {
			maxHoles = 1
		}
		method := backends.MethodAuto
		if c.during != nil {
			method = backends.MethodCopy // a swap, and its drain
		}
		b, err = New(Config{Name: "long", Path: longLinePath(c, dir, 0), StateDir: filepath.Join(dir, "state"), Method: method})
	}
	if err != nil {
		t.Fatal(err)
	}
	found, err := b.Scan(ctx)
	if err != nil {
		t.Fatal(err)
	}
	types := []string{}
	for _, a := range found {
		types = append(types, a.Type)
	}
	j, _ := json.Marshal(types)
	fmt.Printf("ANOMALIES %s\n", j)
	rep, err := b.Compact(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if appendErr != nil {
		t.Fatal(appendErr)
	}
	if c.during != nil && rep.AppendedDuring != 101 {
		t.Fatalf("%d records appended during the compaction, want 101: %+v", rep.AppendedDuring, rep)
	}
	t.Logf("report: %+v", rep)
	kib, err := peakRSSKiB()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("PEAK_RSS_KIB %d\n", kib)
}

// peakRSSKiB returns this process's peak resident set (VmHWM) in KiB. It
// is the peak of the process image since exec, unlike the rusage a parent
// gets, which includes the parent's resident set at the vfork.
func peakRSSKiB() (int64, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			return strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/self/status")
}
