package ndjson

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// scanPieces classifies line with a lineScanner fed in the pieces that
// split gives.
func scanPieces(line []byte, split func(rest int) int) lineFacts {
	var s lineScanner
	for len(line) > 0 {
		n := max(1, min(split(len(line)), len(line)))
		s.feed(line[:n])
		line = line[n:]
	}
	return s.facts()
}

// wantFacts is what the in-memory functions say about line.
func wantFacts(line []byte) lineFacts {
	info, kind := classifyLine(line)
	if len(kind) > maxKindText {
		kind = kind[:maxKindText]
	}
	f := lineFacts{info: info, kind: kind, blank: isBlankLine(line)}
	if s := pyStrip(line); len(s) > 0 {
		f.lead = s[0]
	}
	return f
}

func sameFacts(a, b lineFacts) bool {
	return sameInfo(a.info, b.info) && bytes.Equal(a.kind, b.kind) && (a.kind == nil) == (b.kind == nil) &&
		a.blank == b.blank && a.lead == b.lead
}

// scannerLines is the table, the fixtures, and lines that exercise what
// a streamed line can split: escapes, literals, numbers, Unicode spaces.
func scannerLines(t testing.TB) [][]byte {
	var lines [][]byte
	for _, c := range classifyCases {
		lines = append(lines, []byte(c.line))
	}
	lines = append(lines, fixtureLines(t)...)
	for _, l := range []string{
		`{"kind": "\u0065vent", "timestamp": -1.5e-3}`,
		`{"ki\u006ed": "audit", "time\u0073tamp": 12, "kind": {"a": [1, "x"]}}`,
		`{"kind": ` + `"` + strings.Repeat("k", 300) + `"` + `, "timestamp": 1}`,
		`{"timestamp": ` + strings.Repeat("9", 400) + `}`,
		`{"timestamp": 0.` + strings.Repeat("0", 400) + `17e400}`,
		`{"timestamp": -Infinity, "x": [true, false, null, NaN, -0, 0e1, 1E+2, 2.5e-1]}`,
		`{"timestamp": -Inf}`, `{"timestamp": tru}`, `{"timestamp": 1e}`, `{"timestamp": 1.e1}`, `{"timestamp": -}`,
		`{"timestamp": 12` + "\n", "{\"a\": 1}\n", "{\"a\": 1}\u3000\u2028\n", "\u00a0\u0085{\"a\": 1}", "\u3000\u3000",
		"\xe3\x80", "{\"a\": 1}\xe3\x80", "{\"a\": 1}\xe3\x80\x80\x80", "\x80{}", "{}\x1c\x1d", "{}x", "{} {}", "\n\n",
		`{"a": {"b": {"c": []}}, "timestamp": 5, "d": [[], {}, [{}]]}`,
		`{"a": 1 "b": 2}`, `{"a" 1}`, `{,}`, `{"a": [1,]}`, `{"a": [1 2]}`, `{"a": "\u00e9\"\\\/\b\f\n\r\t"}`,
		`{"timestamp": 1}` + strings.Repeat(" ", 100),
		`{"a":` + strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth) + `}`,
		`{"a":` + strings.Repeat("[", maxDepth+1) + strings.Repeat("]", maxDepth+1) + `}`,
		`{"a":` + strings.Repeat("[", maxDepth) + "1" + strings.Repeat("]", maxDepth) + `}`,
		`{"a":` + strings.Repeat("[", maxDepth-1) + "1" + strings.Repeat("]", maxDepth-1) + `}`,
	} {
		lines = append(lines, []byte(l))
	}
	return lines
}

// TestLineScanner checks that the streaming classifier says what
// classifyLine says, whatever the pieces the line comes in.
func TestLineScanner(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	splits := map[string]func(int) int{
		"whole":  func(n int) int { return n },
		"bytes":  func(int) int { return 1 },
		"random": func(n int) int { return 1 + rng.IntN(17) },
	}
	n := 0
	for _, l := range scannerLines(t) {
		for _, m := range [][]byte{l, append(append([]byte{}, l...), '\n')} {
			want := wantFacts(m)
			for name, split := range splits {
				n++
				if got := scanPieces(m, split); !sameFacts(got, want) {
					t.Fatalf("%s pieces of %.100q: scanner says %+v, classifyLine %+v", name, m, got, want)
				}
			}
		}
	}
	t.Logf("%d lines compared", n)
}

// TestBigNumber checks the reduction of long timestamps against
// strconv on the whole text, where strconv is exact (up to 800 digits and
// beyond when the digits after the 800th are zeros).
func TestBigNumber(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	digits := func(n int, lead bool) string {
		var b strings.Builder
		for i := range n {
			c := byte('0' + rng.IntN(10))
			if i == 0 && lead && c == '0' {
				c = '1'
			}
			b.WriteByte(c)
		}
		return b.String()
	}
	var cases []string
	for range 2000 {
		var b strings.Builder
		if rng.IntN(2) == 0 {
			b.WriteByte('-')
		}
		if rng.IntN(3) == 0 {
			b.WriteByte('0')
		} else {
			b.WriteString(digits(1+rng.IntN(400), true))
		}
		if rng.IntN(2) == 0 {
			b.WriteString("." + strings.Repeat("0", rng.IntN(400)) + digits(1+rng.IntN(400), false))
		}
		if rng.IntN(2) == 0 {
			b.WriteString([]string{"e", "E", "e+", "e-", "E-"}[rng.IntN(5)] + digits(1+rng.IntN(4), false))
		}
		cases = append(cases, b.String())
	}
	cases = append(cases, "0", "-0", "0.000", "-0.0e5", "1e400", "-1e400", "1e-400", "123456789e-99999999999",
		"0."+strings.Repeat("0", 5000)+"1e5000", "1"+strings.Repeat("0", 700)+"e-700",
		"9007199254740993"+strings.Repeat("0", 784), "9007199254740993"+strings.Repeat("0", 784)+"1")
	for _, c := range cases {
		var n bigNumber
		for rest := []byte(c); len(rest) > 0; {
			k := min(len(rest), 1+rng.IntN(50))
			n.add(rest[:k])
			rest = rest[k:]
		}
		gotOK, got := numberValue(n.text())
		wantOK, want := numberValue([]byte(c))
		if gotOK != wantOK || math.Float64bits(got) != math.Float64bits(want) {
			t.Fatalf("%.60q… (%d bytes) reduced to %.80q: %v %v, want %v %v", c, len(c), n.text(), gotOK, got, wantOK, want)
		}
	}
	// Beyond 800 digits strconv can be wrong (it reads this as 9e-202); the
	// reduction is exact, as Python is.
	var n bigNumber
	n.add([]byte("9007199254740993" + strings.Repeat("0", 1000) + "1e-1001"))
	if ok, got := numberValue(n.text()); !ok || got != 9007199254740994 {
		t.Fatalf("halfway and a bit above 2^53+1: %v %v, want 9007199254740994", ok, got)
	}
}

// FuzzLineScanner compares the streaming classifier with classifyLine on
// the same line cut into pieces at the fuzzer's choice.
func FuzzLineScanner(f *testing.F) {
	for i, l := range scannerLines(f) {
		if len(l) < 4096 {
			f.Add(l, uint64(i))
		}
	}
	f.Fuzz(func(t *testing.T, line []byte, seed uint64) {
		rng := rand.New(rand.NewPCG(seed, 1))
		want := wantFacts(line)
		if got := scanPieces(line, func(n int) int { return 1 + rng.IntN(8) }); !sameFacts(got, want) {
			t.Fatalf("pieces of %q: scanner says %+v, classifyLine %+v", line, got, want)
		}
	})
}

// longLinesFile writes lines of every length class around block sizes of
// 64 to 4096 bytes: records, garbage, blank and Unicode-space lines, and,
// when tail, an unterminated last line. It returns the file's content.
func longLinesFile(t *testing.T, path string, tail bool) []byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(11, 11))
	var b []byte
	for i := range 300 {
		n := []int{10, 60, 63, 64, 65, 200, 255, 256, 257, 1000, 4095, 4096, 4097, 9000, 20000}[rng.IntN(15)]
		switch i % 6 {
		case 0, 1:
			b = fmt.Appendf(b, `{"kind": "event", "payload": "%s", "timestamp": %d}`, strings.Repeat("p", n), 1795590000+i)
		case 2:
			b = fmt.Appendf(b, ` {"timestamp": %d, "kind": "%s", "a": [1, {"b": null}]}`+"\u3000", i, strings.Repeat("k", n))
		case 3:
			b = append(b, strings.Repeat("g", n)...)
		case 4:
			b = append(b, strings.Repeat(" ", n)...)
		case 5:
			b = fmt.Appendf(b, `{"timestamp": %d, "payload": "%s"`, i, strings.Repeat("t", n)) // no '}'
		}
		b = append(b, '\n')
	}
	if tail {
		b = fmt.Appendf(b, `{"kind": "event", "payload": "%s"`, strings.Repeat("u", 5000))
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

type readLine struct {
	line     string
	off      int64
	complete bool
}

// splitLines is the reference split of b[start:end].
func splitLines(b []byte, start, end int64) []readLine {
	var out []readLine
	for off := start; off < end; {
		i := bytes.IndexByte(b[off:end], '\n')
		if i < 0 {
			out = append(out, readLine{string(b[off:end]), off, false})
			break
		}
		out = append(out, readLine{string(b[off : off+int64(i)+1]), off, true})
		off += int64(i) + 1
	}
	return out
}

// checkLineFacts compares what the package says about a line the readers
// returned (perhaps a mapping) with what it says about a copy in memory.
func checkLineFacts(t *testing.T, line []byte) {
	t.Helper()
	heap := append([]byte{}, line...)
	forms := [][]byte{line}
	if line[len(line)-1] == '\n' {
		forms = append(forms, line[:len(line)-1])
	}
	for _, l := range forms {
		h := heap[:len(l)]
		gi, gk := classifyLineKind(l)
		wi, wk := classifyLine(h)
		if len(wk) > maxKindText && longLineOf(l) != nil {
			wk = wk[:maxKindText]
		}
		if !sameInfo(gi, wi) || !bytes.Equal(gk, wk) {
			t.Fatalf("line of %d bytes at %.40q: classified %+v %.20q, in memory %+v %.20q", len(l), l, gi, gk, wi, wk)
		}
		if ClassifyLine(l) != ClassifyLine(h) {
			t.Fatalf("ClassifyLine differs on a line of %d bytes", len(l))
		}
	}
	if isBlankLine(line) != isBlankLine(heap) || recordShaped(line) != recordShaped(heap) ||
		lineExcerpt(line) != lineExcerpt(heap) {
		t.Fatalf("line of %d bytes at %.40q: blank %v shaped %v, in memory %v %v", len(line), line,
			isBlankLine(line), recordShaped(line), isBlankLine(heap), recordShaped(heap))
	}
}

// TestLongLineReaders reads files with lines shorter and longer than a
// block forward and backward, from files (long lines are mappings) and from
// a reader that cannot be mapped, and checks the lines, their offsets and
// what the package makes of them.
func TestLongLineReaders(t *testing.T) {
	old := BlockSize
	defer func() { BlockSize = old }()
	path := filepath.Join(t.TempDir(), "lines.ndjson")
	for _, tail := range []bool{false, true} {
		content := longLinesFile(t, path, tail)
		size := int64(len(content))
		bound := int64(bytes.LastIndexByte(content, '\n') + 1)
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for _, bs := range []int{64, 256, 4096} {
			BlockSize = bs
			for _, src := range []struct {
				name string
				r    io.ReaderAt
			}{{"file", f}, {"memory", bytes.NewReader(content)}} {
				for _, r := range [][2]int64{{0, size}, {0, bound}, {1000, size}, {bound / 2, bound}} {
					name := fmt.Sprintf("tail=%v/block=%d/%s/%d-%d", tail, bs, src.name, r[0], r[1])
					want := splitLines(content, r[0], r[1])
					mapped := 0

					var got []readLine
					var held [][]byte // the mapped lines
					lr := NewReader(src.r, r[0], r[1])
					for {
						line, off, complete, err := lr.Next()
						if n := len(held); n > 0 && longLineOf(held[n-1]) != nil {
							t.Fatalf("%s: a long line is still mapped after the next call", name)
						}
						if err == io.EOF {
							break
						}
						if err != nil {
							t.Fatalf("%s: %v", name, err)
						}
						if longLineOf(line) != nil {
							held = append(held, line)
							mapped++
						}
						checkLineFacts(t, line)
						got = append(got, readLine{string(line), off, complete})
					}
					if !slices.Equal(got, want) {
						t.Fatalf("%s: forward read %d lines, want %d (or they differ)", name, len(got), len(want))
					}

					if r[1] == bound && r[0] == lastBoundary(content, r[0]) {
						got = got[:0]
						err := ReadBackward(context.Background(), src.r, r[0], r[1], func(line []byte, off int64) bool {
							if longLineOf(line) != nil {
								held = append(held, line)
								mapped++
							}
							checkLineFacts(t, line)
							got = append(got, readLine{string(line), off, true})
							return true
						})
						if err != nil {
							t.Fatalf("%s: %v", name, err)
						}
						slices.Reverse(got)
						if !slices.Equal(got, want) {
							t.Fatalf("%s: backward read %d lines, want %d (or they differ)", name, len(got), len(want))
						}
					}
					if src.name == "file" && mapped == 0 {
						t.Errorf("%s: no line was read as a mapping", name)
					}
					if src.name == "memory" && mapped != 0 {
						t.Errorf("%s: %d mappings of a reader that is not a file", name, mapped)
					}
					if n := stillMapped(held); n != 0 {
						t.Fatalf("%s: %d long lines still mapped", name, n)
					}
				}
			}
		}
	}
}

// lastBoundary is off if a line starts there, else the start of the next.
func lastBoundary(b []byte, off int64) int64 {
	if off == 0 || b[off-1] == '\n' {
		return off
	}
	return off + int64(bytes.IndexByte(b[off:], '\n')) + 1
}

// stillMapped counts the lines of held (lines the readers returned as
// mappings) that are mapped still. It reads only their addresses.
func stillMapped(held [][]byte) int {
	n := 0
	for _, l := range held {
		if longLineOf(l) != nil {
			n++
		}
	}
	return n
}

// TestLongLineStop checks that a backward read stopped on a long line, or
// one whose callback panics, unmaps it, and that an abandoned forward reader
// gives its mapping back once it is collected.
func TestLongLineStop(t *testing.T) {
	old := BlockSize
	BlockSize = 256
	defer func() { BlockSize = old }()
	path := filepath.Join(t.TempDir(), "lines.ndjson")
	content := longLinesFile(t, path, true)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bound := int64(bytes.LastIndexByte(content, '\n') + 1)
	var held [][]byte
	ReadBackward(context.Background(), f, 0, bound, func(line []byte, off int64) bool {
		if longLineOf(line) != nil {
			held = append(held, line)
			return false
		}
		return true
	})
	if n := stillMapped(held); n != 0 || len(held) != 1 {
		t.Fatalf("stopped on %d long lines: %d still mapped", len(held), n)
	}
	func() {
		defer func() { recover() }()
		ReadBackward(context.Background(), f, 0, bound, func(line []byte, off int64) bool {
			if longLineOf(line) != nil {
				held = append(held, line)
				panic("stop")
			}
			return true
		})
	}()
	if n := stillMapped(held); n != 0 || len(held) != 2 {
		t.Fatalf("after a panic on %d long lines: %d still mapped", len(held), n)
	}
	func() {
		lr := NewReader(f, bound, int64(len(content)))
		line, _, complete, err := lr.Next()
		if err != nil || complete || longLineOf(line) == nil {
			t.Fatalf("the unterminated tail: %v %v mapped=%v", err, complete, longLineOf(line) != nil)
		}
		held = append(held[:0], line) // the slice, not the reader
	}()
	for i := 0; i < 100 && stillMapped(held) != 0; i++ {
		runtime.GC()
		time.Sleep(time.Millisecond)
	}
	if stillMapped(held) != 0 {
		t.Fatal("an abandoned reader's line is still mapped after GC")
	}
}

// TestLongLineAllocs bounds what reading a file with an 8 MiB line
// allocates, forward and backward: the readers' blocks, not the line.
func TestLongLineAllocs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "long.ndjson")
	const n = 8 << 20
	content := append([]byte(`{"kind": "event", "timestamp": 1, "payload": "`), bytes.Repeat([]byte("x"), n)...)
	content = append(content, "\"}\n{\"timestamp\": 2}\n"...)
	content = append(content, bytes.Repeat([]byte("y"), n)...) // unterminated
	if err := os.WriteFile(path, content, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bound := int64(bytes.LastIndexByte(content, '\n') + 1)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var records int
	lr := NewReader(f, 0, int64(len(content)))
	for {
		line, _, _, err := lr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if ClassifyLine(line).Record {
			records++
		}
	}
	err = ReadBackward(context.Background(), f, 0, bound, func(line []byte, off int64) bool {
		if ClassifyLine(line[:len(line)-1]).Record {
			records++
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if records != 4 {
		t.Fatalf("%d records, want 4", records)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4*uint64(BlockSize) {
		t.Fatalf("reading lines of %d MiB allocated %d KiB", n>>20, alloc>>10)
	}
}

// BenchmarkLongLine reads and classifies a 64 MiB record with the readers'
// long-line path (a lineScanner over the blocks), forward.
func BenchmarkLongLine(b *testing.B) {
	path := filepath.Join(b.TempDir(), "long.ndjson")
	content := append([]byte(`{"kind": "event", "timestamp": 1, "payload": "`), bytes.Repeat([]byte("x"), 64<<20)...)
	content = append(content, "\"}\n"...)
	if err := os.WriteFile(path, content, 0o644); err != nil {
		b.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	b.SetBytes(int64(len(content)))
	b.ReportAllocs()
	for b.Loop() {
		lr := NewReader(f, 0, int64(len(content)))
		line, _, _, err := lr.Next()
		if err != nil || !ClassifyLine(line).Record {
			b.Fatal("not read as a record", err)
		}
		lr.Next()
	}
}
