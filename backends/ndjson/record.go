package ndjson

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
	"unicode/utf8"

	"github.com/papyra/watcher/backends"
)

// ClassifyLine reports whether line (without its newline) is a record and
// extracts its top-level timestamp, in one pass and without allocating.
//
// It accepts exactly what Papyra's reader accepts: Python's str.strip() is
// applied first, and json.loads' extensions NaN, Infinity and -Infinity are
// numbers. When a key repeats, the last value wins, as in Python. A nested
// "timestamp" (inside payload) is not the record's timestamp.
//
// A line longer than a block that the line readers of this package handed
// out (a mapping of the file, see longLine) is not read again: the answer is
// what the reader's lineScanner found while reading it.
func ClassifyLine(line []byte) backends.LineInfo {
	if l := longLineOf(line); l != nil {
		return l.info
	}
	info, _ := classifyLine(line)
	return info
}

// classifyLineKind is ClassifyLine that also returns the raw JSON text of
// the record's top-level "kind" value (nil when absent): a slice of line, or
// of a long line a copy of its first maxKindText bytes.
func classifyLineKind(line []byte) (backends.LineInfo, []byte) {
	if l := longLineOf(line); l != nil {
		return l.info, l.kind
	}
	return classifyLine(line)
}

// classifyLine is classifyLineKind for a line in memory.
func classifyLine(line []byte) (backends.LineInfo, []byte) {
	line = pyStrip(line)
	if len(line) == 0 || line[0] != '{' {
		return backends.LineInfo{}, nil
	}
	p := parser{b: line}
	info, kind, ok := p.topObject()
	if !ok {
		return backends.LineInfo{}, nil
	}
	p.ws()
	if p.i != len(p.b) {
		return backends.LineInfo{}, nil
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
func (p *parser) topObject() (info backends.LineInfo, kind []byte, ok bool) {
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

// lineScanner is classifyLine for a line too long to hold in memory: it is
// fed the line in pieces, in order, and keeps one byte per nesting level and
// a few small buffers (the top-level keys, and the text of the top-level
// "timestamp" and "kind" values). It accepts exactly what classifyLine
// accepts: Python's strip, then one JSON object.
type lineScanner struct {
	st      uint8
	stack   []byte // the open objects ('{') and arrays ('['); stack[0] is the record
	lit     string // the literal being matched, of which nlit bytes are matched
	nlit    int
	nhex    int               // hex digits still due in a \u escape
	pend    [utf8.UTFMax]byte // a character begun in leading or trailing whitespace: pend[:npend]
	npend   int
	lead    byte   // the first byte that is not Python whitespace; 0 while none
	inKey   bool   // the string being scanned is a key
	esc     bool   // the string being scanned has an escape
	from    int    // where the key or value being captured starts in the current piece
	key     []byte // the top-level key being read (keyOn), up to maxKeyText bytes
	keyOn   bool
	over    bool   // the key or value being captured is longer than its buffer
	which   uint8  // what the current top-level key names: memberOther, memberTimestamp, memberKind
	val     []byte // the text of a top-level "timestamp" or "kind" value being read (valOn)
	valOn   bool
	big     bool // a timestamp too long for val: num holds it
	num     bigNumber
	info    backends.LineInfo // the record's timestamp so far
	kind    []byte            // the raw text of its last "kind" (up to maxKindText bytes), if hasKind
	hasKind bool
}

// Scanner states.
const (
	scLead     = iota // leading Python whitespace
	scObjFirst        // after '{': a key or '}'
	scObjKey          // after ',' in an object: a key
	scColon           // after a key
	scValue           // a value
	scArrFirst        // after '[': a value or ']'
	scAfter           // after a value: ',' or the end of its container
	scStr             // in a string
	scEsc             // after a backslash in a string
	scHex             // in a \u escape
	scLit             // in a literal
	scMinus           // after '-'
	scZero            // after a leading '0'
	scInt             // in integer digits
	scDot             // after '.'
	scFrac            // in fraction digits
	scE               // after 'e' or 'E'
	scESign           // after the exponent's sign
	scExp             // in exponent digits
	scTrail           // after the record: Python whitespace only
	scFail            // not a record
)

const (
	memberOther = iota
	memberTimestamp
	memberKind
)

const (
	// maxKeyText is the longest raw key that can name "timestamp" or
	// "kind": 9 characters, each at most a 6-byte \u escape, and quotes.
	maxKeyText = 64
	// maxKindText bytes of a long "kind" value are kept: enough for
	// knownKind (a kind in escapes is at most 68 bytes) and lineExcerpt.
	maxKindText = 128
	// maxNumberText bytes of a "timestamp" number are kept as text and
	// read by numberValue, as classifyLine reads it: more than a line held
	// in memory (at most two blocks) can have. A longer one is reduced by
	// bigNumber.
	maxNumberText = 4 << 20
)

// fail makes the line not a record; the rest of it is ignored.
func (s *lineScanner) fail() { s.st = scFail }

// feed scans the next piece of the line.
func (s *lineScanner) feed(p []byte) {
	s.from = 0
	for i := 0; i < len(p) && s.st != scFail; {
		c := p[i]
		switch s.st {
		case scLead, scTrail:
			i = s.space(p, i)
		case scObjFirst, scObjKey, scColon, scValue, scArrFirst, scAfter:
			if c == ' ' || c == '\t' || c == '\n' || c == '\r' {
				i++
				continue
			}
			i = s.token(p, i)
		case scStr:
			j := i
			for j+8 <= len(p) {
				if strSpecial[p[j]]|strSpecial[p[j+1]]|strSpecial[p[j+2]]|strSpecial[p[j+3]]|
					strSpecial[p[j+4]]|strSpecial[p[j+5]]|strSpecial[p[j+6]]|strSpecial[p[j+7]] != 0 {
					break
				}
				j += 8
			}
			for j < len(p) && strSpecial[p[j]] == 0 {
				j++
			}
			i = j
			if i == len(p) {
				break
			}
			switch p[i] {
			case '"':
				i++
				s.endString(p, i)
			case '\\':
				s.esc = true
				s.st = scEsc
				i++
			default: // control character
				s.fail()
			}
		case scEsc:
			switch c {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.st = scStr
			case 'u':
				s.st, s.nhex = scHex, 4
			default:
				s.fail()
			}
			i++
		case scHex:
			if !isHex(c) {
				s.fail()
				continue
			}
			if s.nhex--; s.nhex == 0 {
				s.st = scStr
			}
			i++
		case scLit:
			if c != s.lit[s.nlit] {
				s.fail()
				continue
			}
			i++
			if s.nlit++; s.nlit == len(s.lit) {
				s.endValue(p, i)
			}
		case scMinus:
			switch {
			case c == 'I':
				s.st, s.lit, s.nlit = scLit, "Infinity", 1
			case c == '0':
				s.st = scZero
			case c >= '1' && c <= '9':
				s.st = scInt
			default:
				s.fail()
			}
			i++
		case scDot, scESign:
			if c < '0' || c > '9' {
				s.fail()
				continue
			}
			if s.st == scDot {
				s.st = scFrac
			} else {
				s.st = scExp
			}
			i++
		case scE:
			switch {
			case c == '+' || c == '-':
				s.st = scESign
			case c >= '0' && c <= '9':
				s.st = scExp
			default:
				s.fail()
			}
			i++
		case scZero, scInt, scFrac, scExp:
			if s.st != scZero {
				for i < len(p) && p[i] >= '0' && p[i] <= '9' {
					i++
				}
				if i == len(p) {
					break
				}
				c = p[i]
			}
			switch {
			case c == '.' && (s.st == scZero || s.st == scInt):
				s.st = scDot
				i++
			case (c == 'e' || c == 'E') && s.st != scExp:
				s.st = scE
				i++
			default: // the number ended before c, which is scanned again
				s.endValue(p, i)
			}
		}
	}
	if s.st == scFail {
		return
	}
	if s.keyOn {
		s.addKey(p[s.from:])
	} else if s.valOn {
		s.addVal(p[s.from:])
	}
}

// space scans Python whitespace before or after the record from p[i].
func (s *lineScanner) space(p []byte, i int) int {
	for ; i < len(p); i++ {
		c := p[i]
		if s.npend == 0 && c < utf8.RuneSelf {
			if isPySpace(c) {
				continue
			}
			if s.st == scLead {
				s.lead = c
				if c == '{' {
					s.stack = append(s.stack[:0], '{')
					s.st = scObjFirst
					return i + 1
				}
			}
			s.fail()
			return i
		}
		s.pend[s.npend] = c
		s.npend++
		if !utf8.FullRune(s.pend[:s.npend]) {
			continue
		}
		r, _ := utf8.DecodeRune(s.pend[:s.npend])
		if !isPyUnicodeSpace(r) { // a space is decoded whole: n == s.npend
			if s.st == scLead {
				s.lead = s.pend[0]
			}
			s.fail()
			return i
		}
		s.npend = 0
	}
	return i
}

// token scans the token at p[i] (not whitespace) between values.
func (s *lineScanner) token(p []byte, i int) int {
	c := p[i]
	switch s.st {
	case scObjFirst:
		if c == '}' {
			s.close(p, i)
			return i + 1
		}
		fallthrough
	case scObjKey:
		if c != '"' {
			s.fail()
			return i
		}
		s.st, s.inKey, s.esc = scStr, true, false
		if len(s.stack) == 1 {
			s.keyOn, s.from, s.key, s.over = true, i, s.key[:0], false
		}
	case scColon:
		if c != ':' {
			s.fail()
			return i
		}
		s.st = scValue
	case scArrFirst:
		if c == ']' {
			s.close(p, i)
			return i + 1
		}
		fallthrough
	case scValue:
		s.value(p, i)
	case scAfter:
		top := s.stack[len(s.stack)-1]
		switch {
		case c == ',' && top == '{':
			s.st = scObjKey
		case c == ',':
			s.st = scValue
		case c == '}' && top == '{', c == ']' && top == '[':
			s.close(p, i)
		default:
			s.fail()
		}
	}
	return i + 1
}

// value starts the value at p[i].
func (s *lineScanner) value(p []byte, i int) {
	if len(s.stack)-1 > maxDepth {
		s.fail()
		return
	}
	if len(s.stack) == 1 && s.which != memberOther {
		s.valOn, s.from, s.val, s.over, s.big = true, i, s.val[:0], false, false
	}
	switch c := p[i]; c {
	case '{':
		s.stack = append(s.stack, '{')
		s.st = scObjFirst
	case '[':
		s.stack = append(s.stack, '[')
		s.st = scArrFirst
	case '"':
		s.st, s.inKey = scStr, false
	case 't':
		s.st, s.lit, s.nlit = scLit, "true", 1
	case 'f':
		s.st, s.lit, s.nlit = scLit, "false", 1
	case 'n':
		s.st, s.lit, s.nlit = scLit, "null", 1
	case 'N':
		s.st, s.lit, s.nlit = scLit, "NaN", 1
	case 'I':
		s.st, s.lit, s.nlit = scLit, "Infinity", 1
	case '-':
		s.st = scMinus
	case '0':
		s.st = scZero
	default:
		if c >= '1' && c <= '9' {
			s.st = scInt
		} else {
			s.fail()
		}
	}
}

// close ends the container whose closing bracket is p[i].
func (s *lineScanner) close(p []byte, i int) {
	s.stack = s.stack[:len(s.stack)-1]
	if len(s.stack) == 0 {
		s.st = scTrail
		return
	}
	s.endValue(p, i+1)
}

// endString ends the string whose closing quote is p[j-1].
func (s *lineScanner) endString(p []byte, j int) {
	if !s.inKey {
		s.endValue(p, j)
		return
	}
	s.inKey = false
	s.st = scColon
	if !s.keyOn {
		return
	}
	s.addKey(p[s.from:j])
	s.keyOn = false
	switch {
	case s.over:
		s.which = memberOther
	case keyIs(s.key, s.esc, timestampKey):
		s.which = memberTimestamp
	case keyIs(s.key, s.esc, kindKey):
		s.which = memberKind
	default:
		s.which = memberOther
	}
}

// endValue ends a value whose last byte is p[j-1].
func (s *lineScanner) endValue(p []byte, j int) {
	s.st = scAfter
	if !s.valOn || len(s.stack) != 1 {
		return
	}
	s.addVal(p[s.from:j])
	s.valOn = false
	switch s.which {
	case memberTimestamp:
		switch {
		case s.big:
			s.info.HasTimestamp, s.info.Timestamp = numberValue(s.num.text())
		case s.over:
			s.info.HasTimestamp, s.info.Timestamp = false, 0 // a long string, object or array
		default:
			s.info.HasTimestamp, s.info.Timestamp = numberValue(s.val)
		}
	case memberKind:
		s.kind, s.hasKind = append(s.kind[:0], s.val...), true
	}
}

func (s *lineScanner) addKey(b []byte) {
	if s.over {
		return
	}
	if len(s.key)+len(b) > maxKeyText {
		s.over = true
		return
	}
	s.key = append(s.key, b...)
}

func (s *lineScanner) addVal(b []byte) {
	if s.big {
		s.num.add(b)
		return
	}
	if s.over {
		return
	}
	limit := maxKindText
	if s.which == memberTimestamp {
		limit = maxNumberText
	}
	if len(s.val)+len(b) <= limit {
		s.val = append(s.val, b...)
		return
	}
	room := limit - len(s.val)
	s.val = append(s.val, b[:room]...)
	s.over = true
	if c := s.val[0]; s.which == memberTimestamp && (c == '-' || c >= '0' && c <= '9') {
		s.big = true
		s.num = bigNumber{}
		s.num.add(s.val)
		s.num.add(b[room:])
	}
}

// lineFacts is what a scanner learned about a whole line.
type lineFacts struct {
	info  backends.LineInfo
	kind  []byte // the raw text of the record's kind (its first maxKindText bytes); nil when absent
	blank bool   // nothing but Python whitespace
	lead  byte   // the first byte that is not Python whitespace; 0 when blank
}

// facts reports on the line fed so far, as classifyLine, isBlankLine and
// the start of pyStrip would.
func (s *lineScanner) facts() lineFacts {
	f := lineFacts{blank: s.st == scLead && s.npend == 0, lead: s.lead}
	if s.st == scLead && s.npend > 0 {
		f.lead = s.pend[0] // an incomplete character is not a space
	}
	if s.st == scTrail && s.npend == 0 {
		f.info = s.info
		f.info.Record = true
		if s.hasKind {
			f.kind = s.kind
		}
	}
	return f
}

// bigNumber reduces a JSON number too long to keep as text to a short one
// with the same nearest float64: its sign, its first maxBigDigits
// significant digits (and a 1 after them when a later digit is not 0: the
// rounding only needs to know that), and where its decimal point is, the
// exponent saturating as strconv.ParseFloat's does. ParseFloat reads the
// short number exactly (on a whole text of more than 800 digits it can be
// wrong); only a timestamp longer than maxNumberText is reduced, so a line
// that classifyLine can also see is read as classifyLine reads it.
type bigNumber struct {
	part   uint8 // 0 integer, 1 fraction, 2 exponent
	neg    bool
	expNeg bool
	digits []byte
	sticky bool
	point  int64 // the value is 0.digits × 10^(point ± exp)
	exp    int64
}

const maxBigDigits = 1000

func (n *bigNumber) add(b []byte) {
	for _, c := range b {
		switch {
		case c == '-' && n.part == 2:
			n.expNeg = true
		case c == '-':
			n.neg = true
		case c == '+':
		case c == '.':
			n.part = 1
		case c == 'e' || c == 'E':
			n.part = 2
		case n.part == 2:
			if n.exp < 10000 { // as ParseFloat saturates
				n.exp = n.exp*10 + int64(c-'0')
			}
		case c == '0' && len(n.digits) == 0: // a leading zero
			if n.part == 1 {
				n.point--
			}
		default:
			if len(n.digits) < maxBigDigits {
				n.digits = append(n.digits, c)
			} else if c != '0' {
				n.sticky = true
			}
			if n.part == 0 {
				n.point++
			}
		}
	}
}

// text is a short number with the same value.
func (n *bigNumber) text() []byte {
	var b []byte
	if n.neg {
		b = append(b, '-')
	}
	if len(n.digits) == 0 {
		return append(b, '0')
	}
	b = append(append(b, "0."...), n.digits...)
	if n.sticky {
		b = append(b, '1')
	}
	e := n.point + n.exp
	if n.expNeg {
		e = n.point - n.exp
	}
	return strconv.AppendInt(append(b, 'e'), e, 10)
}

// RecordKind returns the top-level string "kind" of a record line that
// ClassifyLine accepted (the last one when it repeats, as in Python).
func RecordKind(line []byte) (string, bool) {
	line = pyStrip(line)
	p := parser{b: line}
	if len(line) == 0 || line[0] != '{' {
		return "", false
	}
	p.i++
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == '}' {
		return "", false
	}
	kind, found := "", false
	for {
		p.ws()
		start := p.i
		escaped, ok := p.str()
		if !ok {
			return "", false
		}
		isKind := keyIs(p.b[start:p.i], escaped, []byte("kind"))
		p.ws()
		if p.i >= len(p.b) || p.b[p.i] != ':' {
			return "", false
		}
		p.i++
		p.ws()
		vstart := p.i
		if !p.value(0) {
			return "", false
		}
		if isKind {
			v := p.b[vstart:p.i]
			found = false
			if len(v) > 0 && v[0] == '"' {
				var s string
				if err := json.Unmarshal(v, &s); err == nil {
					kind, found = s, true
				}
			}
		}
		p.ws()
		if p.i >= len(p.b) {
			return "", false
		}
		switch p.b[p.i] {
		case ',':
			p.i++
		case '}':
			return kind, found
		default:
			return "", false
		}
	}
}
