package jsonfile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
	"github.com/papyra/watcher/backends/ndjson"
)

// genLine is one generated stored line and the truth about it.
type genLine struct {
	text   string // with its '\n' unless it is an unterminated tail
	record bool
	hasTS  bool
	ts     float64
}

// modelResult is what docs/formats.md says a compaction produces.
type modelResult struct {
	out           []byte
	afterRecords  int64
	beforeRecords int64 // examined records + record-shaped lines older than the cut
	partialKept   bool
}

// model applies retention forward, the way the spec words it. The last line
// may be unterminated; keepPartial says whether it is a write in flight.
func model(lines []genLine, r backends.Retention, now time.Time, keepPartial bool) modelResult {
	var res modelResult
	var tail *genLine
	if n := len(lines); n > 0 && !strings.HasSuffix(lines[n-1].text, "\n") {
		tail, lines = &lines[n-1], lines[:n-1]
	}
	var recs []int // indexes of records
	for i, l := range lines {
		if l.record {
			recs = append(recs, i)
		}
	}
	// 1. age
	if r.MaxAgeSeconds != nil {
		cutoff := backends.UnixSeconds(now) - *r.MaxAgeSeconds
		recs = slices.DeleteFunc(recs, func(i int) bool { return !lines[i].hasTS || lines[i].ts < cutoff })
	}
	// 2. count
	if r.MaxRecords != nil && int64(len(recs)) > *r.MaxRecords {
		recs = recs[int64(len(recs))-*r.MaxRecords:]
	}
	// 3. bytes, newest first, stop at the first that does not fit
	if r.MaxTotalBytes != nil {
		var sum int64
		k := len(recs)
		for k > 0 {
			size := int64(len(lines[recs[k-1]].text))
			if sum+size > *r.MaxTotalBytes {
				break
			}
			sum += size
			k--
		}
		recs = recs[k:]
	}
	for _, i := range recs {
		res.out = append(res.out, lines[i].text...)
	}
	res.afterRecords = int64(len(recs))
	if tail != nil && keepPartial {
		res.out = append(res.out, tail.text...)
		res.partialKept = true
	}
	// before_records: walk newest first until a count or size limit
	// rejects a record; older lines shaped like records ('{' … '}' once
	// stripped) are counted unexamined.
	var cutoff float64
	if r.MaxAgeSeconds != nil {
		cutoff = backends.UnixSeconds(now) - *r.MaxAgeSeconds
	}
	var kept, keptBytes int64
	for i := len(lines) - 1; i >= 0; i-- {
		l := lines[i]
		if !l.record {
			continue
		}
		res.beforeRecords++
		if r.MaxAgeSeconds != nil && (!l.hasTS || l.ts < cutoff) {
			continue
		}
		size := int64(len(l.text))
		if (r.MaxRecords != nil && kept >= *r.MaxRecords) || (r.MaxTotalBytes != nil && keptBytes+size > *r.MaxTotalBytes) {
			for _, o := range lines[:i] {
				if t := strings.TrimSpace(o.text); strings.HasPrefix(t, "{") && strings.HasSuffix(t, "}") {
					res.beforeRecords++
				}
			}
			break
		}
		kept++
		keptBytes += size
	}
	return res
}

// generator makes random Papyra-like streams.
type generator struct {
	rng  *rand.Rand
	ts   float64
	long int // upper bound of a long line's length
}

var unicodeBits = []string{"é", "日本語", "🙂", "Ω", "\\u00e9", "ß", "\u2028"}

func (g *generator) line() genLine {
	g.ts += g.rng.Float64() * 3
	ts := g.ts
	if g.rng.IntN(10) == 0 {
		ts -= g.rng.Float64() * 100 // not monotonic
	}
	tsText := fmt.Sprintf("%.3f", ts)
	ts, _ = strconv.ParseFloat(tsText, 64)
	note := "hello"
	if g.rng.IntN(4) == 0 {
		note = unicodeBits[g.rng.IntN(len(unicodeBits))]
	}
	if g.rng.IntN(25) == 0 {
		note = strings.Repeat("x", g.rng.IntN(g.long+1))
	}
	// A nested "timestamp" that is not the record's.
	nested := fmt.Sprintf(`{"seq": %d, "note": "%s", "timestamp": %d}`, g.rng.IntN(1000), note, g.rng.IntN(3)*1000000)
	switch k := g.rng.IntN(40); {
	case k < 26:
		return genLine{text: fmt.Sprintf(`{"kind": "event", "system_id": "local", "actor_address": "local://w/%d", "event_type": "E", "payload": %s, "timestamp": %s}`+"\n", k, nested, tsText), record: true, hasTS: true, ts: ts}
	case k < 28:
		return genLine{text: fmt.Sprintf(`{"kind": "audit", "system_id": "local", "timestamp": %s, "total_actors": 3, "registry_orphans": [], "registry_dead": ["gone"]}`+"\n", tsText), record: true, hasTS: true, ts: ts}
	case k < 29: // duplicate key: the last wins
		return genLine{text: fmt.Sprintf(`{"kind": "event", "timestamp": 1.0, "payload": %s, "timestamp": %s}`+"\n", nested, tsText), record: true, hasTS: true, ts: ts}
	case k < 30: // escaped key
		return genLine{text: fmt.Sprintf(`{"kind": "event", "time\u0073tamp": %s}`+"\n", tsText), record: true, hasTS: true, ts: ts}
	case k < 31: // padded with whitespace
		return genLine{text: fmt.Sprintf(" \t{\"kind\": \"dead_letter\", \"target\": null, \"payload\": [1, {\"timestamp\": 5}], \"timestamp\": %s}  \r\n", tsText), record: true, hasTS: true, ts: ts}
	case k < 32: // missing timestamp
		return genLine{text: fmt.Sprintf(`{"kind": "event", "payload": %s}`+"\n", nested), record: true}
	case k < 33: // non-numeric timestamps
		bad := []string{`"yesterday"`, `null`, `true`, `[1]`, `{"t": 1}`}[g.rng.IntN(5)]
		return genLine{text: `{"kind": "event", "timestamp": ` + bad + "}\n", record: true}
	case k < 34: // Python's extensions
		v := []string{"NaN", "Infinity", "-Infinity"}[g.rng.IntN(3)]
		f := map[string]float64{"NaN": math.NaN(), "Infinity": math.Inf(1), "-Infinity": math.Inf(-1)}[v]
		return genLine{text: `{"kind": "event", "timestamp": ` + v + "}\n", record: true, hasTS: true, ts: f}
	default: // not records
		bad := []string{"", "   ", "{not json", "[1, 2, 3]", `"just a string"`, "42", "null",
			`{"kind": "event", "timestamp": `, `{"a": 1}}`, "{\"a\": \"tab\tinside\"}", "\x00"}[g.rng.IntN(11)]
		return genLine{text: bad + "\n"}
	}
}

func (g *generator) stream(n int) []genLine {
	lines := make([]genLine, 0, n+1)
	for range n {
		lines = append(lines, g.line())
	}
	if g.rng.IntN(4) == 0 { // an unterminated tail
		l := g.line()
		for len(l.text) < 3 {
			l = g.line()
		}
		cut := g.rng.IntN(len(l.text)-2) + 1
		lines = append(lines, genLine{text: l.text[:cut]})
	}
	return lines
}

func (g *generator) retention() backends.Retention {
	var r backends.Retention
	if g.rng.IntN(2) == 0 {
		v := float64(g.rng.IntN(400))
		r.MaxAgeSeconds = &v
	}
	if g.rng.IntN(2) == 0 {
		v := int64(g.rng.IntN(120))
		r.MaxRecords = &v
	}
	if g.rng.IntN(3) == 0 {
		v := int64(g.rng.IntN(30000))
		r.MaxTotalBytes = &v
	}
	return r
}

func joinLines(lines []genLine) []byte {
	var b bytes.Buffer
	for _, l := range lines {
		b.WriteString(l.text)
	}
	return b.Bytes()
}

// setTunables shrinks the package's sizes and waits for a test.
func setTunables(t testing.TB, block int, holes int) {
	t.Helper()
	ob, oh, od, oq, ot, ow, op := ndjson.BlockSize, maxHoles, ndjson.DirectCopyMin, drainQuiet, tailQuiet, tailMaxWait, parallelMin
	ndjson.BlockSize, maxHoles, ndjson.DirectCopyMin = block, holes, int64(block)
	drainQuiet, tailQuiet, tailMaxWait = time.Millisecond, time.Millisecond, 50*time.Millisecond
	t.Cleanup(func() {
		ndjson.BlockSize, maxHoles, ndjson.DirectCopyMin, drainQuiet, tailQuiet, tailMaxWait = ob, oh, od, oq, ot, ow
		parallelMin = op
	})
}

// newTestJSON is a json target with method copy: the tests that use it
// are of the rewrite and its swap protocol.
func newTestJSON(t testing.TB, dir string) (*File, string) {
	t.Helper()
	return newTestJSONMethod(t, dir, backends.MethodCopy)
}

func newTestJSONMethod(t testing.TB, dir, method string) (*File, string) {
	t.Helper()
	path := filepath.Join(dir, "events.ndjson")
	b, err := New(Config{Name: "events", Path: path, StateDir: filepath.Join(dir, "state"), Method: method})
	if err != nil {
		t.Fatal(err)
	}
	return b, path
}

// checkAgainstModel compacts data (dry run, then for real) and compares with
// the model, once with each method: a copy gives the model's bytes exactly;
// auto gives them after at most one filler line.
func checkAgainstModel(t testing.TB, lines []genLine, r backends.Retention, now time.Time, grace time.Duration, keepPartial bool) {
	t.Helper()
	for _, method := range []string{backends.MethodCopy, backends.MethodAuto, autoIndexed} {
		checkMethodAgainstModel(t, method, lines, r, now, grace, keepPartial)
	}
}

// autoIndexed is method auto on a backend that has compacted before: its
// cut is placed with the block index rather than by pass 1.
const autoIndexed = "auto, indexed"

func checkMethodAgainstModel(t testing.TB, method string, lines []genLine, r backends.Retention, now time.Time, grace time.Duration, keepPartial bool) {
	t.Helper()
	dir := t.TempDir()
	b, path := newTestJSONMethod(t, dir, strings.TrimSuffix(method, ", indexed"))
	b.compacted = method == autoIndexed
	data := joinLines(lines)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-10 * time.Second)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	want := model(lines, r, now, keepPartial)
	opts := backends.CompactOptions{Retention: r, Now: now, PartialLineGrace: grace}
	dryOpts := opts
	dryOpts.DryRun = true
	dry, err := b.Compact(context.Background(), dryOpts)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := b.Compact(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if dry.Method != rep.Method {
		t.Fatalf("method %s: the dry run says %q, the compaction did %q", method, dry.Method, rep.Method)
	}
	body := got
	if rep.Method == backends.MethodInPlace {
		body = stripFiller(t, got)
	} else if method == backends.MethodCopy && rep.Method != backends.MethodCopy {
		t.Fatalf("method copy ran %q", rep.Method)
	}
	if !bytes.Equal(body, want.out) {
		t.Fatalf("method %s (ran %s), retention %s: output differs (%d lines in)\n%s", method, rep.Method, fmtRetention(r), len(lines), firstDiff(body, want.out))
	}
	for _, rp := range []backends.Report{dry, rep} {
		if rp.AfterRecords != want.afterRecords {
			t.Fatalf("method %s (ran %s) dry=%v retention %s: records after %d, model %d", method, rp.Method, rp.DryRun, fmtRetention(r),
				rp.AfterRecords, want.afterRecords)
		}
		if rp.Method != backends.MethodInPlace && rp.BeforeRecords != want.beforeRecords {
			t.Fatalf("method %s (ran %s) dry=%v retention %s: records before %d, model %d", method, rp.Method, rp.DryRun, fmtRetention(r),
				rp.BeforeRecords, want.beforeRecords)
		}
		if *rp.AfterBytes != int64(len(got)) || *rp.BeforeBytes != int64(len(data)) {
			t.Fatalf("method %s (ran %s) dry=%v: bytes before/after %d/%d, want %d/%d", method, rp.Method, rp.DryRun, *rp.BeforeBytes, *rp.AfterBytes, len(data), len(got))
		}
		checkReportInvariants(t, rp)
	}
	d1, d2 := dry.Dropped, rep.Dropped
	if d1 != d2 {
		t.Fatalf("method %s: dry run dropped %+v, compaction %+v", method, d1, d2)
	}
	assertNoLeftovers(t, dir)
}

// stripFiller returns b without its first line, which must be a filler
// line, if it starts with one.
func stripFiller(t testing.TB, b []byte) []byte {
	t.Helper()
	i := bytes.IndexByte(b, '\n')
	if i >= 0 && ndjson.IsFiller(b[:i+1]) {
		return b[i+1:]
	}
	return b
}

func fmtRetention(r backends.Retention) string {
	s := ""
	if r.MaxAgeSeconds != nil {
		s += fmt.Sprintf("age=%v ", *r.MaxAgeSeconds)
	}
	if r.MaxRecords != nil {
		s += fmt.Sprintf("records=%d ", *r.MaxRecords)
	}
	if r.MaxTotalBytes != nil {
		s += fmt.Sprintf("bytes=%d ", *r.MaxTotalBytes)
	}
	return "{" + strings.TrimSpace(s) + "}"
}

// TestJSONCompactProperty compares random streams and retentions with the
// model, with small blocks so that lines cross block boundaries.
func TestJSONCompactProperty(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	iterations := 200
	if testing.Short() {
		iterations = 100
	}
	for i := range iterations {
		block := []int{16, 64, 100, 257, 4096}[rng.IntN(5)]
		holes := []int{2, 5, 65536}[rng.IntN(3)]
		setTunables(t, block, holes)
		// Half the runs split pass 1 over two cores whenever it may.
		parallelMin = []int64{0, 8 << 20}[rng.IntN(2)]
		g := &generator{rng: rng, ts: 1795599000, long: 3 * block}
		lines := g.stream(rng.IntN(150))
		r := g.retention()
		now := unixTime(g.ts - float64(rng.IntN(100)))
		grace, keep := []time.Duration{0, time.Second, time.Hour}[rng.IntN(3)], true
		if grace == time.Second {
			keep = false // the file is 10 s old
		}
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			checkAgainstModel(t, lines, r, now, grace, keep)
		})
		if t.Failed() {
			return
		}
	}
}

// TestGeneratorTruth checks that the generator's truth agrees with
// ClassifyLine, so that the property test checks retention, not the
// generator.
func TestGeneratorTruth(t *testing.T) {
	g := &generator{rng: rand.New(rand.NewPCG(3, 4)), ts: 1795599000, long: 300}
	for range 5000 {
		l := g.line()
		info := ndjson.ClassifyLine([]byte(strings.TrimSuffix(l.text, "\n")))
		if info.Record != l.record || info.HasTimestamp != l.hasTS ||
			(l.hasTS && !(info.Timestamp == l.ts || math.IsNaN(l.ts) && math.IsNaN(info.Timestamp))) {
			t.Fatalf("%q: ClassifyLine %+v, generator %+v", l.text, info, l)
		}
	}
}

// FuzzRetention compacts fuzzed bytes with a fuzzed retention and compares
// with the model (classification by ClassifyLine, tested on its own).
func FuzzRetention(f *testing.F) {
	dirs, _ := filepath.Glob("testdata/json/*")
	for _, d := range dirs {
		in, err := os.ReadFile(filepath.Join(d, "input.ndjson"))
		if err == nil && len(in) < 20000 {
			f.Add(in, uint8(3), int64(5), 1000.0, int64(2000), uint8(7))
		}
	}
	f.Add([]byte("{\"timestamp\": 5}\n\n{}\n{\"timestamp\": 7}\n{\"a\""), uint8(7), int64(1), 3.0, int64(20), uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, which uint8, maxRec int64, maxAge float64, maxBytes int64, block uint8) {
		setTunables(t, int(block%64)+1, int(block%4)+1)
		var r backends.Retention
		if which&1 != 0 && maxRec >= 0 {
			r.MaxRecords = &maxRec
		}
		if which&2 != 0 && maxAge >= 0 && !math.IsInf(maxAge, 0) {
			r.MaxAgeSeconds = &maxAge
		}
		if which&4 != 0 && maxBytes >= 0 {
			r.MaxTotalBytes = &maxBytes
		}
		var lines []genLine
		for len(data) > 0 {
			i := bytes.IndexByte(data, '\n')
			text := data
			if i >= 0 {
				text = data[:i+1]
			}
			data = data[len(text):]
			info := ndjson.ClassifyLine(bytes.TrimSuffix(text, []byte("\n")))
			l := genLine{text: string(text), record: info.Record, hasTS: info.HasTimestamp, ts: info.Timestamp}
			if !strings.HasSuffix(l.text, "\n") {
				l = genLine{text: l.text}
			}
			lines = append(lines, l)
		}
		checkAgainstModel(t, lines, r, unixTime(100), 0, true)
	})
}

func TestJSONMissingFile(t *testing.T) {
	dir := t.TempDir()
	b, path := newTestJSON(t, dir)
	for _, dry := range []bool{true, false} {
		rep, err := b.Compact(context.Background(), backends.CompactOptions{DryRun: dry, Retention: backends.Retention{MaxRecords: backends.Int64(3)}})
		if err != nil {
			t.Fatal(err)
		}
		if rep.BeforeRecords != 0 || rep.AfterRecords != 0 || *rep.BeforeBytes != 0 || *rep.AfterBytes != 0 || *rep.ReclaimedBytes != 0 {
			t.Fatalf("report %+v", rep)
		}
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("compaction created the file")
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != "state" {
			t.Errorf("created %s", e.Name())
		}
	}
	st, err := b.Stat(context.Background())
	if err != nil || st.Bytes != 0 || len(st.Files) != 1 || st.Files[0] != path {
		t.Fatalf("Stat = %+v, %v", st, err)
	}
	if a, err := b.Scan(context.Background()); err != nil || len(a) != 0 {
		t.Fatalf("Scan = %v, %v", a, err)
	}
}

func TestJSONStat(t *testing.T) {
	dir := t.TempDir()
	b, path := newTestJSON(t, dir)
	os.WriteFile(path, []byte("{}\n"), 0o644)
	mt := time.Unix(1795599000, 0)
	os.Chtimes(path, mt, mt)
	st, err := b.Stat(context.Background())
	if err != nil || st.Bytes != 3 || !st.ModTime.Equal(mt) {
		t.Fatalf("Stat = %+v, %v", st, err)
	}
}

// TestJSONDryRunChangesNothing: bytes, mtime, inode and the directory
// listing are unchanged.
func TestJSONDryRunChangesNothing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "events.ndjson")
	b, err := New(Config{Name: "events", Path: path, StateDir: filepath.Join(dir, "state")})
	if err != nil {
		t.Fatal(err)
	}
	in, _ := os.ReadFile("testdata/json/corrupt_lines_count/input.ndjson")
	os.WriteFile(path, append(in, `{"kind": "event", "timest`...), 0o600)
	mt := time.Unix(1795599000, 0)
	os.Chtimes(path, mt, mt)
	before, _ := os.Stat(path)
	listBefore, _ := os.ReadDir(dir)
	rep, err := b.Compact(context.Background(), backends.CompactOptions{DryRun: true, Retention: backends.Retention{MaxRecords: backends.Int64(2)}, PartialLineGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.DryRun || rep.AfterRecords != 2 || rep.Dropped.Partial != 1 {
		t.Fatalf("report %+v", rep)
	}
	after, _ := os.Stat(path)
	got, _ := os.ReadFile(path)
	listAfter, _ := os.ReadDir(dir)
	if !bytes.Equal(got, append(in, `{"kind": "event", "timest`...)) || !after.ModTime().Equal(before.ModTime()) || !os.SameFile(before, after) {
		t.Fatal("dry run changed the file")
	}
	if len(listAfter) != len(listBefore) {
		t.Fatalf("dry run changed the directory: %v -> %v", listBefore, listAfter)
	}
	if _, err := os.Stat(filepath.Join(dir, "state")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("dry run created the state directory")
	}
}

func TestJSONSymlink(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real.ndjson")
	link := filepath.Join(dir, "events.ndjson")
	in, _ := os.ReadFile("testdata/json/count/input.ndjson")
	want, _ := os.ReadFile("testdata/json/count/expected.ndjson")
	os.WriteFile(real, in, 0o644)
	if err := os.Symlink("real.ndjson", link); err != nil {
		t.Fatal(err)
	}
	opts := backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(25)}}
	b, _ := New(Config{Name: "e", Path: link, StateDir: filepath.Join(dir, "state")})
	if _, err := b.Compact(context.Background(), opts); !errors.Is(err, backends.ErrSymlink) {
		t.Fatalf("refused symlink: err = %v", err)
	}
	if _, err := b.Scan(context.Background()); !errors.Is(err, backends.ErrSymlink) {
		t.Fatalf("scan of refused symlink: err = %v", err)
	}
	b, _ = New(Config{Name: "e", Path: link, StateDir: filepath.Join(dir, "state"), FollowSymlinks: true, Method: backends.MethodCopy})
	if _, err := b.Compact(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatal("the link was replaced")
	}
	if got, _ := os.ReadFile(real); !bytes.Equal(got, want) {
		t.Fatal("the real file was not compacted")
	}
}

func TestNewJSONErrors(t *testing.T) {
	if _, err := New(Config{Name: "x", Path: "relative.ndjson"}); err == nil || !strings.Contains(err.Error(), "not absolute") {
		t.Fatalf("relative path: %v", err)
	}
	if _, err := New(Config{Name: "x"}); err == nil {
		t.Fatal("empty path accepted")
	}
	b, _ := New(Config{Name: "x", Path: "/tmp/x.ndjson"})
	if _, err := b.Compact(context.Background(), backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(-1)}}); err == nil {
		t.Fatal("negative max_records accepted")
	}
}

// TestJSONTargetReplaced: the file is replaced (or removed) by someone else
// during the compaction: ErrTargetReplaced, and nothing is changed.
func TestJSONTargetReplaced(t *testing.T) {
	for _, point := range []string{"temp-created", "survivors-copied", "caught-up", "linked", "journaled"} {
		for _, remove := range []bool{false, true} {
			t.Run(fmt.Sprint(point, remove), func(t *testing.T) {
				dir := t.TempDir()
				b, path := newTestJSON(t, dir)
				in, _ := os.ReadFile("testdata/json/count/input.ndjson")
				os.WriteFile(path, in, 0o644)
				replacement := []byte("{\"kind\": \"event\", \"timestamp\": 1}\n")
				fsx.SetCrashHook(func(p string) error {
					if p == point {
						if remove {
							os.Remove(path)
						} else {
							os.WriteFile(path+".new", replacement, 0o644)
							os.Rename(path+".new", path)
						}
					}
					return nil
				})
				defer func() { fsx.SetCrashHook(nil) }()
				_, err := b.Compact(context.Background(), backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(5)}})
				if !errors.Is(err, backends.ErrTargetReplaced) {
					t.Fatalf("err = %v", err)
				}
				got, err := os.ReadFile(path)
				if remove {
					if !errors.Is(err, os.ErrNotExist) {
						t.Fatal("the removed target was recreated")
					}
				} else if !bytes.Equal(got, replacement) {
					t.Fatal("the replacement was changed")
				}
				assertNoLeftovers(t, dir)
				if _, err := os.Stat(b.journalPath); !errors.Is(err, os.ErrNotExist) {
					t.Fatal("journal left behind")
				}
			})
		}
	}
}

// TestJSONCancel: a cancelled compaction leaves the old content and no
// temp file.
func TestJSONCancel(t *testing.T) {
	setTunables(t, 64, 65536)
	dir := t.TempDir()
	b, path := newTestJSON(t, dir)
	in, _ := os.ReadFile("testdata/json/count/input.ndjson")
	os.WriteFile(path, in, 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	var asked int
	_, err := b.Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(50)}, WaitIO: func(ctx context.Context, n int) error {
		asked++
		cancel()
		return ctx.Err()
	}})
	if !errors.Is(err, context.Canceled) || asked == 0 {
		t.Fatalf("err = %v, WaitIO calls %d", err, asked)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, in) {
		t.Fatal("cancelled compaction changed the file")
	}
	assertNoLeftovers(t, dir)
}

// TestJSONWaitIOAndProgress: every written byte is asked for first and
// progress ends at the total.
func TestJSONWaitIOAndProgress(t *testing.T) {
	setTunables(t, 256, 65536)
	dir := t.TempDir()
	b, path := newTestJSON(t, dir)
	in, _ := os.ReadFile("testdata/json/corrupt_lines/input.ndjson")
	big := bytes.Repeat(in, 20)
	os.WriteFile(path, big, 0o644)
	var asked int64
	var lastDone, lastTotal int64
	rep, err := b.Compact(context.Background(), backends.CompactOptions{
		WaitIO:   func(ctx context.Context, n int) error { asked += int64(n); return nil },
		Progress: func(done, total int64) { lastDone, lastTotal = done, total },
	})
	if err != nil {
		t.Fatal(err)
	}
	if asked < *rep.AfterBytes {
		t.Fatalf("WaitIO asked for %d bytes, %d written", asked, *rep.AfterBytes)
	}
	if lastTotal == 0 || lastDone != lastTotal {
		t.Fatalf("progress ended at %d/%d", lastDone, lastTotal)
	}
}

func TestJSONScan(t *testing.T) {
	dir := t.TempDir()
	b, path := newTestJSON(t, dir)
	content := "{\"kind\": \"event\", \"timestamp\": 1}\n" +
		"{not json\n" +
		"\n" +
		"{\"kind\": \"event\"}\n" +
		"{\"kind\": \"telemetry\", \"timestamp\": 2}\n" +
		"{\"kind\": \"dead_\\u006cetter\", \"timestamp\": 2}\n" +
		"{\"timestamp\": 3}\n" +
		"{\"kind\": \"audit\", \"timest"
	os.WriteFile(path, []byte(content), 0o644)
	os.WriteFile(filepath.Join(dir, fsx.TempPrefix("events.ndjson")+"abc"), nil, 0o644)
	got, err := b.Scan(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, a := range got {
		types = append(types, a.Type+"@"+strings.SplitN(a.Detail, ":", 2)[0])
		if a.Target != "events" {
			t.Errorf("target %q", a.Target)
		}
	}
	want := []string{
		"leftover@temporary file of an interrupted compaction",
		"invalid_line@line 2", "invalid_line@line 3",
		"missing_timestamp@line 4",
		"unknown_kind@line 5",
		"unknown_kind@line 7",
		"partial_line@line 8 (offset 163)",
	}
	if !slices.Equal(types, want) {
		t.Fatalf("anomalies:\n%s\nwant\n%s", strings.Join(types, "\n"), strings.Join(want, "\n"))
	}
	// The cap: many invalid lines give MaxAnomaliesPerType plus a summary.
	os.WriteFile(path, bytes.Repeat([]byte("x\n"), 250), 0o644)
	got, _ = b.Scan(context.Background())
	if len(got) != ndjson.MaxAnomaliesPerType+2 || !strings.Contains(got[len(got)-1].Detail, "150 more invalid_line") {
		t.Fatalf("%d anomalies, last %+v", len(got), got[len(got)-1])
	}
}
