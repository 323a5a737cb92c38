package ndjson

import (
	"bufio"
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/papyra/watcher/backends"
)

// reference classifies line with encoding/json, for plain JSON (no NaN or
// Infinity): a record is an object after Python's strip; its timestamp is
// the last top-level "timestamp" when that is a number.
func reference(line []byte) backends.LineInfo {
	s := pyStrip(line)
	if len(s) == 0 || s[0] != '{' || !json.Valid(s) {
		return backends.LineInfo{}
	}
	info := backends.LineInfo{Record: true}
	dec := json.NewDecoder(bytes.NewReader(s))
	dec.UseNumber()
	dec.Token() // {
	for dec.More() {
		k, _ := dec.Token()
		var v json.RawMessage
		dec.Decode(&v)
		if k == "timestamp" {
			info.HasTimestamp, info.Timestamp = false, 0
			var n json.Number
			if len(v) > 0 && v[0] != '"' && json.Unmarshal(v, &n) == nil {
				f, err := n.Float64()
				if err == nil || math.IsInf(f, 0) {
					info.HasTimestamp, info.Timestamp = true, f
				}
			}
		}
	}
	return info
}

func sameInfo(a, b backends.LineInfo) bool {
	return a.Record == b.Record && a.HasTimestamp == b.HasTimestamp &&
		(a.Timestamp == b.Timestamp || math.IsNaN(a.Timestamp) && math.IsNaN(b.Timestamp))
}

var classifyCases = []struct {
	line string
	want backends.LineInfo
}{
	{`{"kind": "event", "timestamp": 1795599998.0}`, backends.LineInfo{Record: true, HasTimestamp: true, Timestamp: 1795599998.0}},
	{`{"timestamp": 1, "payload": {"timestamp": 2}}`, backends.LineInfo{Record: true, HasTimestamp: true, Timestamp: 1}},
	{`{"payload": {"timestamp": 2}}`, backends.LineInfo{Record: true, HasTimestamp: false, Timestamp: 0}},
	{`{"timestamp": 1, "timestamp": 2}`, backends.LineInfo{Record: true, HasTimestamp: true, Timestamp: 2}},    // last wins
	{`{"timestamp": 1, "timestamp": "x"}`, backends.LineInfo{Record: true, HasTimestamp: false, Timestamp: 0}}, // last wins
	{`{"time\u0073tamp": 7}`, backends.LineInfo{Record: true, HasTimestamp: true, Timestamp: 7}},               // escaped key
	{`{"timestamp\u0000": 7}`, backends.LineInfo{Record: true, HasTimestamp: false, Timestamp: 0}},             // not the key
	{`{"timestamp": NaN}`, backends.LineInfo{Record: true, HasTimestamp: true, Timestamp: math.NaN()}},         // Python extension
	{`{"timestamp": Infinity}`, backends.LineInfo{Record: true, HasTimestamp: true, Timestamp: math.Inf(1)}},   // Python extension
	{`{"timestamp": -Infinity}`, backends.LineInfo{Record: true, HasTimestamp: true, Timestamp: math.Inf(-1)}}, // Python extension
	{`{"a": [NaN, -Infinity]}`, backends.LineInfo{Record: true, HasTimestamp: false, Timestamp: 0}},            // nested extensions
	{`{"timestamp": 1e400}`, backends.LineInfo{Record: true, HasTimestamp: true, Timestamp: math.Inf(1)}},      // out of range
	{`{"timestamp": -0}`, backends.LineInfo{Record: true, HasTimestamp: true, Timestamp: 0}},                   // negative zero
	{`{"timestamp": "1795599998.0"}`, backends.LineInfo{Record: true, HasTimestamp: false, Timestamp: 0}},      // a string
	{`{"timestamp": null}`, backends.LineInfo{Record: true, HasTimestamp: false, Timestamp: 0}},                //
	{`{"timestamp": true}`, backends.LineInfo{Record: true, HasTimestamp: false, Timestamp: 0}},                //
	{" \t{\"timestamp\": 3}\r\n ", backends.LineInfo{Record: true, HasTimestamp: true, Timestamp: 3}},          // stripped
	{"\u3000{\"timestamp\": 3}\u00a0", backends.LineInfo{Record: true, HasTimestamp: true, Timestamp: 3}},      // Unicode spaces
	{"\u200b{\"timestamp\": 3}", backends.LineInfo{}},                                                          // ZWSP is not a space
	{`{}`, backends.LineInfo{Record: true, HasTimestamp: false, Timestamp: 0}},                                 //
	{``, backends.LineInfo{}},                                // blank
	{`   `, backends.LineInfo{}},                             //
	{`[1, 2]`, backends.LineInfo{}},                          // not an object
	{`"s"`, backends.LineInfo{}},                             //
	{`null`, backends.LineInfo{}},                            //
	{`{"a": 1} x`, backends.LineInfo{}},                      // trailing garbage
	{`{"a": 1}{}`, backends.LineInfo{}},                      //
	{`{"a": 01}`, backends.LineInfo{}},                       // bad number
	{`{"a": 1.}`, backends.LineInfo{}},                       //
	{`{"a": "tab	in"}`, backends.LineInfo{}},                 // control character
	{`{"a": "\x"}`, backends.LineInfo{}},                     // bad escape
	{`{"a": "\u12"}`, backends.LineInfo{}},                   //
	{`{"a": -NaN}`, backends.LineInfo{}},                     // not Python
	{`{"a": nan}`, backends.LineInfo{}},                      //
	{`{"a": 1,}`, backends.LineInfo{}},                       // trailing comma
	{`{'a': 1}`, backends.LineInfo{}},                        //
	{`{"kind": "event", "timestamp": `, backends.LineInfo{}}, // truncated
	{"{\"a\": \"caf\xc3\xa9 \xe6\x97\xa5\"}", backends.LineInfo{Record: true, HasTimestamp: false, Timestamp: 0}}, // UTF-8
	{`{"a": "\ud800"}`, backends.LineInfo{Record: true, HasTimestamp: false, Timestamp: 0}},                       // lone surrogate, as Python
	{strings.Repeat("[", 20000), backends.LineInfo{}},                                                             // too deep
	{`{"a":` + strings.Repeat("[", 500) + strings.Repeat("]", 500) + `}`, backends.LineInfo{Record: true, HasTimestamp: false, Timestamp: 0}},
}

func TestClassifyLine(t *testing.T) {
	for _, c := range classifyCases {
		if got := ClassifyLine([]byte(c.line)); !sameInfo(got, c.want) {
			t.Errorf("ClassifyLine(%.60q) = %+v, want %+v", c.line, got, c.want)
		}
	}
}

// fixtureLines returns every line of the files Papyra wrote in
// testdata/papyra (the distinct inputs of the json golden cases).
func fixtureLines(t testing.TB) [][]byte {
	files, err := filepath.Glob("testdata/papyra/*.ndjson")
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures in testdata/papyra (%v)", err)
	}
	var out [][]byte
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(fh)
		for {
			line, err := r.ReadBytes('\n')
			if len(line) > 0 {
				out = append(out, bytes.TrimSuffix(line, []byte("\n")))
			}
			if err != nil {
				break
			}
		}
		fh.Close()
	}
	if len(out) < 100 {
		t.Fatalf("only %d fixture lines", len(out))
	}
	return out
}

// TestClassifyLineDifferential compares with encoding/json on the fixture
// lines, the table, and mutations of them.
func TestClassifyLineDifferential(t *testing.T) {
	lines := fixtureLines(t)
	for _, c := range classifyCases {
		if !strings.Contains(c.line, "NaN") && !strings.Contains(c.line, "Infinity") &&
			!strings.Contains(c.line, "[[[[") && !strings.ContainsAny(c.line, "\u3000\u00a0") {
			lines = append(lines, []byte(c.line))
		}
	}
	n := 0
	for _, l := range lines {
		for cut := 0; cut <= len(l); cut += 1 + len(l)/40 {
			for _, m := range [][]byte{l[:cut], append(append([]byte{}, l[:cut]...), l[min(cut+1, len(l)):]...)} {
				if bytes.Contains(m, []byte("NaN")) || bytes.Contains(m, []byte("Infinity")) {
					continue
				}
				n++
				if got, want := ClassifyLine(m), reference(m); !sameInfo(got, want) {
					t.Fatalf("ClassifyLine(%.80q) = %+v, encoding/json says %+v", m, got, want)
				}
			}
		}
	}
	t.Logf("%d lines compared", n)
}

func TestClassifyLineNoAlloc(t *testing.T) {
	lines := fixtureLines(t)
	allocs := testing.AllocsPerRun(10, func() {
		for _, l := range lines {
			ClassifyLine(l)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per pass", allocs)
	}
}

func FuzzClassifyLine(f *testing.F) {
	for _, l := range fixtureLines(f) {
		f.Add(l)
	}
	for _, c := range classifyCases {
		f.Add([]byte(c.line))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		got := ClassifyLine(line)
		if bytes.Contains(line, []byte("NaN")) || bytes.Contains(line, []byte("Infinity")) {
			return // Python's extensions: encoding/json rejects them
		}
		if bytes.Count(line, []byte("["))+bytes.Count(line, []byte("{")) > maxDepth {
			return
		}
		if want := reference(line); !sameInfo(got, want) {
			t.Fatalf("ClassifyLine(%q) = %+v, encoding/json says %+v", line, got, want)
		}
	})
}
