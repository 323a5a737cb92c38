package deploy

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// A reader of the subset of HCL a Nomad job file uses: blocks with labels,
// attributes whose values are strings (with escapes), heredocs (<<EOT and
// the indented <<-EOT), numbers, booleans and lists, and the three kinds of
// comments. Nomad itself is not packaged for Debian and the module has no
// HCL library, so this is what checks the job's structure; anything outside
// the subset is an error, never silently skipped.

type hclBlock struct {
	Type   string
	Labels []string
	Attrs  map[string]any // string, float64, bool, []any
	Blocks []*hclBlock
}

func (b *hclBlock) blocks(typ string) []*hclBlock {
	var out []*hclBlock
	for _, c := range b.Blocks {
		if c.Type == typ {
			out = append(out, c)
		}
	}
	return out
}

func (b *hclBlock) one(t *testing.T, typ string) *hclBlock {
	t.Helper()
	bs := b.blocks(typ)
	if len(bs) != 1 {
		t.Fatalf("%s %q: %d %s blocks, want 1", b.Type, b.Labels, len(bs), typ)
	}
	return bs[0]
}

type hclParser struct {
	src  string
	pos  int
	line int
}

func parseHCL(src string) (*hclBlock, error) {
	p := &hclParser{src: src, line: 1}
	root := &hclBlock{Attrs: map[string]any{}}
	if err := p.body(root, false); err != nil {
		return nil, fmt.Errorf("line %d: %w", p.line, err)
	}
	return root, nil
}

// skip passes over blanks, newlines and comments.
func (p *hclParser) skip() {
	for p.pos < len(p.src) {
		c := p.src[p.pos]
		switch {
		case c == '\n':
			p.line++
			p.pos++
		case c == ' ' || c == '\t' || c == '\r':
			p.pos++
		case c == '#' || strings.HasPrefix(p.src[p.pos:], "//"):
			for p.pos < len(p.src) && p.src[p.pos] != '\n' {
				p.pos++
			}
		case strings.HasPrefix(p.src[p.pos:], "/*"):
			end := strings.Index(p.src[p.pos+2:], "*/")
			if end < 0 {
				p.pos = len(p.src)
				return
			}
			p.line += strings.Count(p.src[p.pos:p.pos+2+end], "\n")
			p.pos += end + 4
		default:
			return
		}
	}
}

func (p *hclParser) ident() string {
	start := p.pos
	for p.pos < len(p.src) {
		r := rune(p.src[p.pos])
		if !(unicode.IsLetter(r) || unicode.IsDigit(r) || r == '_' || r == '-') {
			break
		}
		p.pos++
	}
	return p.src[start:p.pos]
}

// body reads attributes and blocks up to '}' (nested) or the end.
func (p *hclParser) body(b *hclBlock, nested bool) error {
	for {
		p.skip()
		if p.pos >= len(p.src) {
			if nested {
				return fmt.Errorf("unclosed block %s", b.Type)
			}
			return nil
		}
		if p.src[p.pos] == '}' {
			if !nested {
				return fmt.Errorf("unexpected }")
			}
			p.pos++
			return nil
		}
		name := p.ident()
		if name == "" {
			return fmt.Errorf("unexpected %q", p.src[p.pos])
		}
		p.skip()
		if p.pos < len(p.src) && p.src[p.pos] == '=' {
			p.pos++
			if _, dup := b.Attrs[name]; dup {
				return fmt.Errorf("attribute %s set twice", name)
			}
			v, err := p.value()
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			b.Attrs[name] = v
			continue
		}
		child := &hclBlock{Type: name, Attrs: map[string]any{}}
		for {
			p.skip()
			if p.pos >= len(p.src) {
				return fmt.Errorf("block %s: no {", name)
			}
			if p.src[p.pos] == '{' {
				p.pos++
				break
			}
			if p.src[p.pos] != '"' {
				return fmt.Errorf("block %s: label %q is not a string", name, p.src[p.pos])
			}
			l, err := p.str()
			if err != nil {
				return err
			}
			child.Labels = append(child.Labels, l)
		}
		if err := p.body(child, true); err != nil {
			return err
		}
		b.Blocks = append(b.Blocks, child)
	}
}

func (p *hclParser) value() (any, error) {
	p.skip()
	if p.pos >= len(p.src) {
		return nil, fmt.Errorf("no value")
	}
	switch c := p.src[p.pos]; {
	case c == '"':
		return p.str()
	case strings.HasPrefix(p.src[p.pos:], "<<"):
		return p.heredoc()
	case c == '[':
		p.pos++
		var list []any
		for {
			p.skip()
			if p.pos < len(p.src) && p.src[p.pos] == ']' {
				p.pos++
				return list, nil
			}
			v, err := p.value()
			if err != nil {
				return nil, err
			}
			list = append(list, v)
			p.skip()
			if p.pos < len(p.src) && p.src[p.pos] == ',' {
				p.pos++
			} else if p.pos >= len(p.src) || p.src[p.pos] != ']' {
				return nil, fmt.Errorf("list: want , or ]")
			}
		}
	case c == '-' || c >= '0' && c <= '9':
		start := p.pos
		p.pos++
		for p.pos < len(p.src) && strings.IndexByte("0123456789.eE+-", p.src[p.pos]) >= 0 {
			p.pos++
		}
		return strconv.ParseFloat(p.src[start:p.pos], 64)
	default:
		switch id := p.ident(); id {
		case "true":
			return true, nil
		case "false":
			return false, nil
		default:
			return nil, fmt.Errorf("unsupported value %q (this reader knows strings, heredocs, numbers, booleans, lists)", id)
		}
	}
}

// str reads a quoted string. ${…} interpolations are kept as written.
func (p *hclParser) str() (string, error) {
	p.pos++ // "
	var sb strings.Builder
	for p.pos < len(p.src) {
		c := p.src[p.pos]
		switch c {
		case '"':
			p.pos++
			return sb.String(), nil
		case '\n':
			return "", fmt.Errorf("newline in a string")
		case '\\':
			if p.pos+1 >= len(p.src) {
				return "", fmt.Errorf("unfinished escape")
			}
			e := p.src[p.pos+1]
			m := map[byte]string{'n': "\n", 't': "\t", 'r': "\r", '"': `"`, '\\': `\`}
			s, ok := m[e]
			if !ok {
				return "", fmt.Errorf("escape \\%c not supported", e)
			}
			sb.WriteString(s)
			p.pos += 2
		default:
			sb.WriteByte(c)
			p.pos++
		}
	}
	return "", fmt.Errorf("unterminated string")
}

// heredoc reads <<MARK … MARK or <<-MARK … MARK (the indented form, whose
// lines lose their common leading whitespace).
func (p *hclParser) heredoc() (string, error) {
	p.pos += 2
	indented := false
	if p.pos < len(p.src) && p.src[p.pos] == '-' {
		indented = true
		p.pos++
	}
	mark := p.ident()
	nl := strings.IndexByte(p.src[p.pos:], '\n')
	if mark == "" || nl < 0 || strings.TrimSpace(p.src[p.pos:p.pos+nl]) != "" {
		return "", fmt.Errorf("bad heredoc opening")
	}
	p.pos += nl + 1
	p.line++
	var lines []string
	for p.pos < len(p.src) {
		end := strings.IndexByte(p.src[p.pos:], '\n')
		if end < 0 {
			end = len(p.src) - p.pos
		}
		l := p.src[p.pos : p.pos+end]
		p.pos += end
		if p.pos < len(p.src) {
			p.pos++
		}
		p.line++
		if strings.TrimSpace(l) == mark && (indented || l == mark) {
			if indented {
				lines = dedent(lines)
			}
			if len(lines) == 0 {
				return "", nil
			}
			return strings.Join(lines, "\n") + "\n", nil
		}
		lines = append(lines, l)
	}
	return "", fmt.Errorf("heredoc %s not closed", mark)
}

// dedent removes the whitespace prefix common to every non-blank line.
func dedent(lines []string) []string {
	prefix := -1
	for _, l := range lines {
		if strings.TrimSpace(l) == "" {
			continue
		}
		n := len(l) - len(strings.TrimLeft(l, " \t"))
		if prefix < 0 || n < prefix {
			prefix = n
		}
	}
	out := make([]string, len(lines))
	for i, l := range lines {
		if len(l) >= prefix && prefix > 0 {
			out[i] = l[prefix:]
		} else {
			out[i] = strings.TrimLeft(l, " \t")
		}
	}
	return out
}

func TestHCLReader(t *testing.T) {
	b, err := parseHCL(`# comment
job "j" {
  type = "batch" // comment
  /* block
     comment */
  n = 2.5
  ok = true
  l = ["a", "b\"c",]
  periodic {
    crons = ["17 */6 * * *"]
  }
  data = <<-EOT
    a = 1
      b = "${x}"
    EOT
}
`)
	if err != nil {
		t.Fatal(err)
	}
	j := b.one(t, "job")
	if j.Labels[0] != "j" || j.Attrs["type"] != "batch" || j.Attrs["n"] != 2.5 || j.Attrs["ok"] != true {
		t.Errorf("job %+v", j)
	}
	if l := toStrings(t, j.Attrs["l"]); len(l) != 2 || l[1] != `b"c` {
		t.Errorf("list %q", l)
	}
	if d := j.Attrs["data"]; d != "a = 1\n  b = \"${x}\"\n" {
		t.Errorf("heredoc %q", d)
	}
	if c := toStrings(t, j.one(t, "periodic").Attrs["crons"]); c[0] != "17 */6 * * *" {
		t.Errorf("crons %q", c)
	}
	for _, bad := range []string{`a = `, `a = "x`, `b {`, `a = x`, `a = 1` + "\n" + `a = 2`, `}`, `a = <<EOT` + "\nx\n"} {
		if _, err := parseHCL(bad); err == nil {
			t.Errorf("parseHCL(%q) accepted", bad)
		}
	}
}
