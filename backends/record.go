package backends

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
	"unicode/utf8"
)

// LineInfo is what the classifier learned about one stored line.
type LineInfo struct {
	// Record is true when the line is a JSON object: only such lines are
	// records. Blank lines, lines that are not JSON and JSON that is not an
	// object are not.
	Record bool
	// HasTimestamp is true when the object has a numeric top-level
	// "timestamp"; Timestamp is its value.
	HasTimestamp bool
	Timestamp    float64
}

// ClassifyLine reports whether line (without its newline) is a record and
// extracts its top-level timestamp, in one pass and without allocating.
//
// It accepts exactly what Papyra's reader accepts: Python's str.strip() is
// applied first, and json.loads' extensions NaN, Infinity and -Infinity are
// numbers. When a key repeats, the last value wins, as in Python. A nested
// "timestamp" (inside payload) is not the record's timestamp.
func ClassifyLine(line []byte) LineInfo {
	info, _ := classifyLine(line)
	return info
}

// classifyLine is ClassifyLine that also returns the raw JSON text of the
// record's top-level "kind" value (nil when absent), a slice of line.
func classifyLine(line []byte) (LineInfo, []byte) {
	line = pyStrip(line)
	if len(line) == 0 || line[0] != '{' {
		return LineInfo{}, nil
	}
	p := parser{b: line}
	info, kind, ok := p.topObject()
	if !ok {
		return LineInfo{}, nil
	}
	p.ws()
	if p.i != len(p.b) {
		return LineInfo{}, nil
	}
	info.Record = true
	return info, kind
}

// pyStrip trims what Python's str.strip() trims at the ends of a UTF-8
// line: the characters for which str.isspace() is true (ASCII whitespace and
// separators 0x1c-0x1f, NEL, NBSP, and the Unicode spaces and separators).
func pyStrip(b []byte) []byte {
	for len(b) > 0 {
		if isPySpace(b[0]) {
			b = b[1:]
			continue
		}
		if b[0] < 0x80 {
			break
		}
		r, n := utf8.DecodeRune(b)
		if !isPyUnicodeSpace(r) {
			break
		}
		b = b[n:]
	}
	for len(b) > 0 {
		c := b[len(b)-1]
		if isPySpace(c) {
			b = b[:len(b)-1]
			continue
		}
		if c < 0x80 {
			break
		}
		r, n := utf8.DecodeLastRune(b)
		if !isPyUnicodeSpace(r) {
			break
		}
		b = b[:len(b)-n]
	}
	return b
}

func isPySpace(c byte) bool {
	switch c {
	case ' ', '\t', '\n', '\r', 0x0b, 0x0c, 0x1c, 0x1d, 0x1e, 0x1f:
		return true
	}
	return false
}

// isPyUnicodeSpace reports whether Python's str.isspace() is true for the
// non-ASCII rune r.
func isPyUnicodeSpace(r rune) bool {
	switch {
	case r == 0x85, r == 0xa0, r == 0x1680, r >= 0x2000 && r <= 0x200a,
		r == 0x2028, r == 0x2029, r == 0x202f, r == 0x205f, r == 0x3000:
		return true
	}
	return false
}

// parser is a validating JSON scanner over one line. It never allocates on
// the common path.
type parser struct {
	b []byte
	i int
}

func (p *parser) ws() {
	if p.i < len(p.b) && p.b[p.i] > ' ' {
		return
	}
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

var (
	timestampKey = []byte("timestamp")
	kindKey      = []byte("kind")
)

// topObject scans the top-level object and remembers its last "timestamp"
// and the raw text of its last "kind".
func (p *parser) topObject() (info LineInfo, kind []byte, ok bool) {
	p.i++ // '{'
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == '}' {
		p.i++
		return info, nil, true
	}
	for {
		p.ws()
		start := p.i
		escaped, ok := p.str()
		if !ok {
			return info, nil, false
		}
		isTS := keyIs(p.b[start:p.i], escaped, timestampKey)
		isKind := !isTS && keyIs(p.b[start:p.i], escaped, kindKey)
		p.ws()
		if p.i >= len(p.b) || p.b[p.i] != ':' {
			return info, nil, false
		}
		p.i++
		p.ws()
		vstart := p.i
		if !p.value(0) {
			return info, nil, false
		}
		if isTS {
			info.HasTimestamp, info.Timestamp = numberValue(p.b[vstart:p.i])
		} else if isKind {
			kind = p.b[vstart:p.i]
		}
		p.ws()
		if p.i >= len(p.b) {
			return info, nil, false
		}
		switch p.b[p.i] {
		case ',':
			p.i++
		case '}':
			p.i++
			return info, kind, true
		default:
			return info, nil, false
		}
	}
}

// keyIs reports whether the quoted JSON string raw equals want.
func keyIs(raw []byte, escaped bool, want []byte) bool {
	if !escaped {
		return bytes.Equal(raw[1:len(raw)-1], want)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return false
	}
	return s == string(want)
}

// numberValue interprets a scanned JSON value as Python would compare it: a
// number (including NaN and ±Infinity) is numeric; anything else is not.
func numberValue(v []byte) (bool, float64) {
	switch string(v) {
	case "NaN":
		return true, math.NaN()
	case "Infinity":
		return true, math.Inf(1)
	case "-Infinity":
		return true, math.Inf(-1)
	}
	if len(v) == 0 || !(v[0] == '-' || (v[0] >= '0' && v[0] <= '9')) {
		return false, 0
	}
	f, err := strconv.ParseFloat(string(v), 64)
	if err != nil {
		// Out of range: ParseFloat still returns ±Inf, which compares as
		// Python's arbitrary-precision int or float would.
		if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
			return true, f
		}
		return false, 0
	}
	return true, f
}

const maxDepth = 10000

func (p *parser) value(depth int) bool {
	if depth > maxDepth || p.i >= len(p.b) {
		return false
	}
	switch c := p.b[p.i]; c {
	case '{':
		return p.object(depth + 1)
	case '[':
		return p.array(depth + 1)
	case '"':
		_, ok := p.str()
		return ok
	case 't':
		return p.lit("true")
	case 'f':
		return p.lit("false")
	case 'n':
		return p.lit("null")
	case 'N':
		return p.lit("NaN")
	case 'I':
		return p.lit("Infinity")
	case '-':
		if p.i+1 < len(p.b) && p.b[p.i+1] == 'I' {
			p.i++
			return p.lit("Infinity")
		}
		return p.number()
	default:
		if c >= '0' && c <= '9' {
			return p.number()
		}
		return false
	}
}

func (p *parser) lit(s string) bool {
	if len(p.b)-p.i < len(s) || string(p.b[p.i:p.i+len(s)]) != s {
		return false
	}
	p.i += len(s)
	return true
}

func (p *parser) object(depth int) bool {
	p.i++ // '{'
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == '}' {
		p.i++
		return true
	}
	for {
		p.ws()
		if _, ok := p.str(); !ok {
			return false
		}
		p.ws()
		if p.i >= len(p.b) || p.b[p.i] != ':' {
			return false
		}
		p.i++
		p.ws()
		if !p.value(depth) {
			return false
		}
		p.ws()
		if p.i >= len(p.b) {
			return false
		}
		switch p.b[p.i] {
		case ',':
			p.i++
		case '}':
			p.i++
			return true
		default:
			return false
		}
	}
}

func (p *parser) array(depth int) bool {
	p.i++ // '['
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == ']' {
		p.i++
		return true
	}
	for {
		p.ws()
		if !p.value(depth) {
			return false
		}
		p.ws()
		if p.i >= len(p.b) {
			return false
		}
		switch p.b[p.i] {
		case ',':
			p.i++
		case ']':
			p.i++
			return true
		default:
			return false
		}
	}
}

// str scans a JSON string starting at '"'. It reports whether the string
// contained an escape.
func (p *parser) str() (escaped bool, ok bool) {
	if p.i >= len(p.b) || p.b[p.i] != '"' {
		return false, false
	}
	p.i++
	for p.i < len(p.b) {
		// Skip plain bytes quickly, eight at a time where possible.
		j := p.i
		b := p.b
		for j+8 <= len(b) {
			if strSpecial[b[j]]|strSpecial[b[j+1]]|strSpecial[b[j+2]]|strSpecial[b[j+3]]|
				strSpecial[b[j+4]]|strSpecial[b[j+5]]|strSpecial[b[j+6]]|strSpecial[b[j+7]] != 0 {
				break
			}
			j += 8
		}
		for j < len(b) && strSpecial[b[j]] == 0 {
			j++
		}
		p.i = j
		if p.i >= len(p.b) {
			return escaped, false
		}
		switch c := p.b[p.i]; {
		case c == '"':
			p.i++
			return escaped, true
		case c == '\\':
			escaped = true
			p.i++
			if p.i >= len(p.b) {
				return escaped, false
			}
			switch p.b[p.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				p.i++
			case 'u':
				if len(p.b)-p.i < 5 {
					return escaped, false
				}
				for k := 1; k <= 4; k++ {
					if !isHex(p.b[p.i+k]) {
						return escaped, false
					}
				}
				p.i += 5
			default:
				return escaped, false
			}
		default: // control character: Python's strict json.loads rejects it
			return escaped, false
		}
	}
	return escaped, false
}

// strSpecial marks the bytes that end a run of plain string bytes: the
// quote, the backslash and control characters.
var strSpecial = func() (t [256]uint8) {
	for c := 0; c < 0x20; c++ {
		t[c] = 1
	}
	t['"'], t['\\'] = 1, 1
	return t
}()

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// number scans a JSON number (RFC 8259 grammar).
func (p *parser) number() bool {
	b := p.b
	i := p.i
	if i < len(b) && b[i] == '-' {
		i++
	}
	if i >= len(b) {
		return false
	}
	if b[i] == '0' {
		i++
	} else if b[i] >= '1' && b[i] <= '9' {
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	} else {
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		d := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == d {
			return false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		d := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == d {
			return false
		}
	}
	p.i = i
	return true
}
