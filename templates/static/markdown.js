/*
 * Markdown to DOM, safe by construction: window.Markdown.render(text) -> DocumentFragment.
 *
 * Model text is never given to innerHTML or any HTML parser: every node is made with
 * createElement and every piece of text is a text node, so "<script>" in a reply is
 * just those characters. Covered: paragraphs, headings, emphasis (strong, em, del),
 * ordered and unordered lists (nested by indentation), links, block quotes, tables,
 * thematic breaks, inline code and fenced code with a language label. Rules:
 * - a link keeps its href only if it resolves to http(s) (relative links resolve to this
 *   site); anything else (javascript:, data:, vbscript:, ...) is shown as its text only;
 *   links open in a new tab with rel="noopener noreferrer";
 * - no images: ![alt](src) is shown as a link to src (when it is http(s)) named alt;
 * - raw HTML is text; an unterminated fence runs to the end (as it streams in);
 * - nesting (quotes, lists, emphasis) is capped at MAX_DEPTH so hostile input cannot
 *   exhaust the stack;
 * - a table has at most MAX_TABLE_COLUMNS columns and MAX_TABLE_CELLS cells (its header's
 *   included); a bigger one is shown as plain text in a code block, so a reply cannot make
 *   rows x columns nodes. A row shorter than the header gets only its own cells.
 * Code in a few common languages is highlighted here, locally: comments, strings,
 * numbers and keywords become <span class="tok-..."> around text nodes.
 */
(function () {
  "use strict";

  const MAX_DEPTH = 12;
  const MAX_LINK_SCAN = 1000; // a link's label or target longer than this is plain text
  const MAX_TABLE_COLUMNS = 64;
  const MAX_TABLE_CELLS = 10000;
  const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)/;
  const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
  const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
  const QUOTE = /^ {0,3}> ?/;
  const ITEM = /^([ \t]*)([-*+]|\d{1,9}[.)])[ \t]+(.*)$/;
  const TABLE_RULE = /^[ \t]*\|?[ \t]*:?-+:?[ \t]*(\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/;
  const LANGUAGE = /^[A-Za-z0-9_+#.-]{1,32}$/;
  const AUTOLINK = /^https?:\/\/[^\s<>"'`]+[^\s<>"'`.,;:!?)\]}]/;

  const C_LIKE = "break case catch class const continue default do else enum extends false"
    + " finally for function if import in instanceof let new null return static struct super"
    + " switch this throw true try typeof var void while yield async await export from";
  const KEYWORDS = {
    python: "and as assert async await break class continue def del elif else except False"
      + " finally for from global if import in is lambda None nonlocal not or pass raise"
      + " return True try while with yield self",
    js: C_LIKE + " undefined of",
    ts: C_LIKE + " undefined of interface type implements readonly private public",
    go: C_LIKE + " chan defer func go map package range select nil",
    rust: C_LIKE + " fn impl let mut pub use mod match loop trait where crate Self self",
    c: C_LIKE + " int char long short unsigned double float sizeof typedef include define",
    sh: "if then else elif fi for while do done case esac function in return export local"
      + " echo exit set unset",
    json: "true false null",
    yaml: "true false null yes no",
    sql: "select from where insert into values update set delete create table and or not"
      + " null join on group by order limit as",
  };
  const ALIASES = {
    py: "python", python3: "python", javascript: "js", node: "js", typescript: "ts",
    golang: "go", rs: "rust", cpp: "c", "c++": "c", java: "c", csharp: "c", cs: "c",
    bash: "sh", shell: "sh", zsh: "sh", console: "sh", yml: "yaml",
  };
  const HASH_COMMENTS = new Set(["python", "sh", "yaml"]);
  const MAX_HIGHLIGHT = 20000; // longer code is shown plain

  /** Code as text nodes, with known tokens wrapped in spans (never parsed as HTML). */
  function highlight(code, language) {
    const name = ALIASES[language.toLowerCase()] || language.toLowerCase();
    const fragment = document.createDocumentFragment();
    if (!KEYWORDS[name] || code.length > MAX_HIGHLIGHT) {
      fragment.appendChild(text(code));
      return fragment;
    }
    const words = new Set(KEYWORDS[name].split(" "));
    const caseless = name === "sql";
    const comment = HASH_COMMENTS.has(name) ? "#[^\\n]*" : name === "sql" ? "--[^\\n]*" : "//[^\\n]*|/\\*[\\s\\S]*?(?:\\*/|$)";
    const token = new RegExp(
      "(" + comment + ")|(\"(?:[^\"\\\\\\n]|\\\\.)*\"?|'(?:[^'\\\\\\n]|\\\\.)*'?|`[^`]*`?)"
        + "|(\\b\\d[\\d_.xXa-fA-F]*\\b)|([A-Za-z_][A-Za-z0-9_]*)",
      "g"
    );
    let last = 0;
    let match;
    while ((match = token.exec(code)) !== null) {
      if (match[0] === "") {
        token.lastIndex += 1;
        continue;
      }
      let kind = match[1] ? "comment" : match[2] ? "string" : match[3] ? "number" : "";
      if (match[4] && words.has(caseless ? match[4].toLowerCase() : match[4])) kind = "keyword";
      if (!kind) continue;
      if (match.index > last) fragment.appendChild(text(code.slice(last, match.index)));
      const span = el("span", "tok-" + kind);
      span.textContent = match[0];
      fragment.appendChild(span);
      last = match.index + match[0].length;
    }
    if (last < code.length) fragment.appendChild(text(code.slice(last)));
    return fragment;
  }

  function el(tag, className) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    return node;
  }

  function text(value) {
    return document.createTextNode(value);
  }

  /** href for a link target, or null: only http(s) and relative links are kept. */
  function safeHref(url) {
    if (typeof url !== "string" || !url.trim()) return null;
    let parsed;
    try {
      parsed = new URL(url.trim(), location.href);
    } catch (_) {
      return null;
    }
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:") return null;
    return parsed.href;
  }

  function indentOf(line) {
    const match = /^[ \t]*/.exec(line)[0];
    return match.replace(/\t/g, "    ").length;
  }

  function isBlank(line) {
    return !line.trim();
  }

  function startsBlock(line, next) {
    return (
      FENCE.test(line) ||
      HEADING.test(line) ||
      RULE.test(line) ||
      QUOTE.test(line) ||
      ITEM.test(line) ||
      (line.includes("|") && next !== undefined && TABLE_RULE.test(next) && next.includes("-"))
    );
  }

  // ---- blocks ------------------------------------------------------------------------

  function renderBlocks(lines, parent, depth) {
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (isBlank(line)) {
        i += 1;
        continue;
      }
      let match = FENCE.exec(line);
      if (match) {
        i = fencedCode(lines, i, match, parent);
        continue;
      }
      match = HEADING.exec(line);
      if (match) {
        const heading = el("h" + match[1].length);
        renderInline(match[2] || "", heading, depth);
        parent.appendChild(heading);
        i += 1;
        continue;
      }
      if (RULE.test(line)) {
        parent.appendChild(el("hr"));
        i += 1;
        continue;
      }
      if (QUOTE.test(line)) {
        const quoted = [];
        while (i < lines.length && !isBlank(lines[i]) && (QUOTE.test(lines[i]) || quoted.length)) {
          if (!QUOTE.test(lines[i]) && startsBlock(lines[i], lines[i + 1])) break;
          quoted.push(lines[i].replace(QUOTE, ""));
          i += 1;
        }
        const quote = el("blockquote");
        if (depth < MAX_DEPTH) renderBlocks(quoted, quote, depth + 1);
        else quote.appendChild(text(quoted.join("\n")));
        parent.appendChild(quote);
        continue;
      }
      if (ITEM.test(line)) {
        i = list(lines, i, parent, depth);
        continue;
      }
      if (line.includes("|") && i + 1 < lines.length && TABLE_RULE.test(lines[i + 1]) && lines[i + 1].includes("-")) {
        i = table(lines, i, parent, depth);
        continue;
      }
      const paragraph = [line];
      i += 1;
      while (i < lines.length && !isBlank(lines[i]) && !startsBlock(lines[i], lines[i + 1])) {
        paragraph.push(lines[i]);
        i += 1;
      }
      const p = el("p");
      renderInline(paragraph.map(function (l) { return l.trim(); }).join("\n"), p, depth);
      parent.appendChild(p);
    }
  }

  function fencedCode(lines, start, match, parent) {
    const fence = match[1];
    const language = LANGUAGE.test(match[2] || "") ? match[2] : "";
    const body = [];
    let i = start + 1;
    let closed = false;
    while (i < lines.length) {
      const trimmed = lines[i].trim();
      if (trimmed.length >= fence.length && trimmed === fence[0].repeat(trimmed.length)) {
        closed = true;
        i += 1;
        break;
      }
      body.push(lines[i]);
      i += 1;
    }
    parent.appendChild(codeBlock(body.join("\n"), language, closed));
    return i;
  }

  function codeBlock(source, language, closed) {
    const block = el("div", "code-block");
    const head = el("div", "code-head");
    head.appendChild(el("span", "code-lang")).textContent = language || "text";
    const copy = el("button", "copy-code button-quiet");
    copy.type = "button";
    copy.textContent = "Copy code";
    head.appendChild(copy);
    const pre = el("pre");
    const code = el("code", language ? "language-" + language : "");
    code.appendChild(highlight(source, language));
    pre.appendChild(code);
    block.appendChild(head);
    block.appendChild(pre);
    if (!closed) block.dataset.open = "true";
    return block;
  }

  /** A list starting at lines[start]; items deeper than its own indent nest inside. */
  function list(lines, start, parent, depth) {
    const first = ITEM.exec(lines[start]);
    const indent = indentOf(first[1]);
    const ordered = /\d/.test(first[2]);
    const node = el(ordered ? "ol" : "ul");
    if (ordered) {
      const number = parseInt(first[2], 10);
      if (number !== 1 && number < 1e9) node.setAttribute("start", String(number));
    }
    let i = start;
    while (i < lines.length) {
      const match = ITEM.exec(lines[i]);
      if (!match || indentOf(match[1]) !== indent || /\d/.test(match[2]) !== ordered) break;
      const offset = match[1].length + match[2].length + 1;
      const content = [match[3]];
      let blocks = false;
      i += 1;
      // The item's own lines: deeper-indented ones (a nested list, code) and plain
      // continuation text; a blank line stays inside only if an indented line follows.
      while (i < lines.length) {
        const line = lines[i];
        if (isBlank(line)) {
          const next = lines[i + 1];
          if (next !== undefined && !isBlank(next) && indentOf(next) > indent) {
            content.push("");
            blocks = true;
            i += 1;
            continue;
          }
          break;
        }
        const item = ITEM.exec(line);
        if (indentOf(line) > indent) {
          const lead = /^[ \t]*/.exec(line)[0].length;
          const inner = line.slice(Math.min(lead, offset));
          if (startsBlock(inner.trim(), undefined)) blocks = true;
          content.push(inner);
        } else if (!item && !startsBlock(line, lines[i + 1])) {
          content.push(line.trim());
        } else {
          break;
        }
        i += 1;
      }
      const li = el("li");
      if (depth >= MAX_DEPTH) {
        li.appendChild(text(content.join("\n")));
      } else if (!blocks) {
        renderInline(content.map(function (l) { return l.trim(); }).join("\n"), li, depth + 1);
      } else {
        renderBlocks(content, li, depth + 1);
        if (li.firstChild && li.firstChild.tagName === "P") li.firstChild.classList.add("tight");
      }
      node.appendChild(li);
      // Blank lines between items of this same list do not end it.
      while (i < lines.length && isBlank(lines[i])) {
        const next = lines[i + 1];
        const item = next === undefined ? null : ITEM.exec(next);
        if (item && indentOf(item[1]) === indent) i += 1;
        else break;
      }
    }
    parent.appendChild(node);
    return i;
  }

  function cells(line) {
    let row = line.trim();
    if (row.startsWith("|")) row = row.slice(1);
    if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
    const out = [];
    let current = "";
    for (let k = 0; k < row.length; k += 1) {
      if (row[k] === "\\" && row[k + 1] === "|") {
        current += "|";
        k += 1;
      } else if (row[k] === "|") {
        out.push(current.trim());
        current = "";
      } else {
        current += row[k];
      }
    }
    out.push(current.trim());
    return out;
  }

  /**
   * A table from lines[start] (header) and lines[start + 1] (alignments) on. Past
   * MAX_TABLE_COLUMNS or MAX_TABLE_CELLS the lines are shown as plain text instead.
   */
  function table(lines, start, parent, depth) {
    let end = start + 2;
    while (end < lines.length && !isBlank(lines[end]) && lines[end].includes("|")) end += 1;
    const header = cells(lines[start]);
    const rows = [];
    let total = header.length;
    let fits = header.length <= MAX_TABLE_COLUMNS;
    for (let i = start + 2; fits && i < end; i += 1) {
      const values = cells(lines[i]).slice(0, header.length);
      total += values.length;
      fits = total <= MAX_TABLE_CELLS;
      rows.push(values);
    }
    if (!fits) {
      const block = codeBlock(lines.slice(start, end).join("\n"), "", true);
      block.classList.add("table-as-text");
      parent.appendChild(block);
      return end;
    }
    const aligns = cells(lines[start + 1]).map(function (spec) {
      const left = spec.startsWith(":");
      const right = spec.endsWith(":");
      return left && right ? "center" : right ? "right" : left ? "left" : "";
    });
    const wrap = el("div", "table-wrap");
    const node = el("table");
    const thead = el("thead");
    const headRow = el("tr");
    header.forEach(function (cell, k) {
      const th = el("th");
      if (aligns[k]) th.className = "align-" + aligns[k];
      renderInline(cell, th, depth + 1);
      headRow.appendChild(th);
    });
    thead.appendChild(headRow);
    node.appendChild(thead);
    const tbody = el("tbody");
    for (const values of rows) {
      const row = el("tr");
      values.forEach(function (value, k) {
        const td = el("td");
        if (aligns[k]) td.className = "align-" + aligns[k];
        renderInline(value, td, depth + 1);
        row.appendChild(td);
      });
      tbody.appendChild(row);
    }
    node.appendChild(tbody);
    wrap.appendChild(node);
    parent.appendChild(wrap);
    return end;
  }

  // ---- inline ------------------------------------------------------------------------

  /**
   * For each "[" in `source`, the index of its matching "]" (escaped brackets do not
   * count): one pass with a stack, so many unmatched "[" cost no more than a few.
   */
  function bracketPairs(source) {
    const pairs = new Map();
    const open = [];
    for (let k = 0; k < source.length; k += 1) {
      const c = source[k];
      if (c === "\\") k += 1;
      else if (c === "[") open.push(k);
      else if (c === "]" && open.length) pairs.set(open.pop(), k);
    }
    return pairs;
  }

  /** [label](target "title") starting at `start`: {label, href, end} or null. */
  function linkAt(source, start, pairs) {
    const close = pairs.has(start) ? pairs.get(start) : -1;
    if (close < 0 || close - start > MAX_LINK_SCAN || source[close + 1] !== "(") return null;
    if (pairs.lastParen === undefined) pairs.lastParen = source.lastIndexOf(")");
    if (pairs.lastParen < close) return null; // no ")" after it: not a link
    let level = 0;
    let k = close + 1;
    const end = Math.min(source.length, k + MAX_LINK_SCAN);
    for (; k < end; k += 1) {
      const c = source[k];
      if (c === "\\") k += 1;
      else if (c === "(") level += 1;
      else if (c === ")") {
        level -= 1;
        if (level === 0) break;
      } else if (c === "\n") return null;
    }
    if (k >= end) return null;
    let target = source.slice(close + 2, k).trim();
    const titled = /^(\S+)\s+["'(].*["')]$/.exec(target);
    if (titled) target = titled[1];
    if (target.startsWith("<") && target.endsWith(">")) target = target.slice(1, -1);
    return { label: source.slice(start + 1, close), target: target, end: k + 1 };
  }

  function renderInline(source, parent, depth) {
    let buffer = "";
    const missing = {}; // delimiters with no closer left: never searched for again
    let pairs = null; // bracket pairs, found on the first "["
    function link(at) {
      if (pairs === null) pairs = bracketPairs(source);
      return linkAt(source, at, pairs);
    }
    function flush() {
      if (buffer) parent.appendChild(text(buffer));
      buffer = "";
    }
    function wrap(tag, inner) {
      flush();
      const node = el(tag);
      if (depth < MAX_DEPTH) renderInline(inner, node, depth + 1);
      else node.appendChild(text(inner));
      parent.appendChild(node);
    }
    let i = 0;
    while (i < source.length) {
      const c = source[i];
      if (c === "\\" && i + 1 < source.length && /[!-/:-@[-`{-~]/.test(source[i + 1])) {
        buffer += source[i + 1];
        i += 2;
        continue;
      }
      if (c === "\n") {
        buffer += "\n";
        i += 1;
        continue;
      }
      if (c === "`") {
        const run = /^`+/.exec(source.slice(i))[0];
        const close = missing[run] ? -1 : source.indexOf(run, i + run.length);
        if (close > 0) {
          flush();
          const code = el("code");
          code.textContent = source.slice(i + run.length, close).replace(/^ (.*) $/s, "$1");
          parent.appendChild(code);
          i = close + run.length;
          continue;
        }
        missing[run] = true;
        buffer += run;
        i += run.length;
        continue;
      }
      if (c === "!" && source[i + 1] === "[") {
        const image = link(i + 1);
        if (image) {
          // No images from markdown: a link named by the alt text, when the target is safe.
          flush();
          const href = safeHref(image.target);
          const label = "image: " + (image.label || image.target);
          if (href) parent.appendChild(anchor(href, label));
          else parent.appendChild(text(label));
          i = image.end;
          continue;
        }
      }
      if (c === "[") {
        const found = link(i);
        if (found) {
          flush();
          const href = safeHref(found.target);
          if (href) {
            const a = anchor(href, "");
            if (depth < MAX_DEPTH) renderInline(found.label, a, depth + 1);
            else a.textContent = found.label;
            parent.appendChild(a);
          } else {
            // An unsafe target: keep the words, drop the link.
            const span = el("span", "unsafe-link");
            span.textContent = found.label;
            parent.appendChild(span);
          }
          i = found.end;
          continue;
        }
      }
      if ((c === "h") && (i === 0 || /[\s(]/.test(source[i - 1]))) {
        const auto = AUTOLINK.exec(source.slice(i, i + 2048));
        if (auto) {
          const href = safeHref(auto[0]);
          if (href) {
            flush();
            parent.appendChild(anchor(href, auto[0]));
            i += auto[0].length;
            continue;
          }
        }
      }
      if (c === "*" || c === "_" || c === "~") {
        const double = source[i + 1] === c;
        if (c === "~" && !double) {
          buffer += c;
          i += 1;
          continue;
        }
        const delimiter = double ? c + c : c;
        const leftFlanking = i + delimiter.length < source.length && !/\s/.test(source[i + delimiter.length]);
        const intraword = c === "_" && i > 0 && /[A-Za-z0-9]/.test(source[i - 1]);
        if (leftFlanking && !intraword && !missing[delimiter]) {
          const close = closingDelimiter(source, i + delimiter.length, delimiter);
          if (close > 0) {
            wrap(c === "~" ? "del" : double ? "strong" : "em", source.slice(i + delimiter.length, close));
            i = close + delimiter.length;
            continue;
          }
          missing[delimiter] = true;
        }
        buffer += delimiter;
        i += delimiter.length;
        continue;
      }
      buffer += c;
      i += 1;
    }
    flush();
  }

  /** The closing delimiter at or after `from` (not after whitespace), or -1. */
  function closingDelimiter(source, from, delimiter) {
    let k = from;
    for (;;) {
      k = source.indexOf(delimiter, k);
      if (k < 0) return -1;
      const single = delimiter.length === 1;
      const doubled = single && (source[k + 1] === delimiter || source[k - 1] === delimiter);
      const trailingWord = delimiter[0] === "_" && /[A-Za-z0-9]/.test(source[k + delimiter.length] || "");
      if (k > from && !/\s/.test(source[k - 1]) && !doubled && !trailingWord) return k;
      k += single && doubled ? 2 : 1;
    }
  }

  function anchor(href, label) {
    const a = el("a");
    a.href = href;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    if (label) a.textContent = label;
    return a;
  }

  /** The DOM for `source` (a string of markdown), as a fragment to put in a bubble. */
  function render(source) {
    const fragment = document.createDocumentFragment();
    const value = typeof source === "string" ? source : "";
    renderBlocks(value.replace(/\r\n?/g, "\n").split("\n"), fragment, 0);
    return fragment;
  }

  window.Markdown = { render: render, safeHref: safeHref };
})();
