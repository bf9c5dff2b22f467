//! A minimal XML writer: EC2 responses are small and regular, so a string
//! builder with correct escaping beats a serialisation framework in compile
//! time and in control over the exact element order clients expect.

pub struct Writer {
    out: String,
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

pub fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 cannot carry at all; never expected, never emitted.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
}

impl Writer {
    pub fn new() -> Self {
        Writer {
            out: String::with_capacity(1024),
        }
    }

    pub fn raw(&mut self, s: &str) {
        self.out.push_str(s);
    }

    pub fn open(&mut self, tag: &str) {
        self.out.push('<');
        self.out.push_str(tag);
        self.out.push('>');
    }

    pub fn open_ns(&mut self, tag: &str, ns: &str) {
        self.out.push('<');
        self.out.push_str(tag);
        self.out.push_str(" xmlns=\"");
        escape_into(&mut self.out, ns);
        self.out.push_str("\">");
    }

    pub fn close(&mut self, tag: &str) {
        self.out.push_str("</");
        self.out.push_str(tag);
        self.out.push('>');
    }

    pub fn elem(&mut self, tag: &str, text: &str) {
        self.open(tag);
        escape_into(&mut self.out, text);
        self.close(tag);
    }

    pub fn empty(&mut self, tag: &str) {
        self.out.push('<');
        self.out.push_str(tag);
        self.out.push_str("/>");
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_drops_control_characters() {
        let mut w = Writer::new();
        w.elem("m", "a<b & \"c\" 'd'\u{1}>");
        assert_eq!(
            w.finish(),
            "<m>a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;</m>"
        );
    }
}
