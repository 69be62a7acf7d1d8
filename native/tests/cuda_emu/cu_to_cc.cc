// cuda_emu_cu2cc: rewrites a CUDA source (.cu or .cuh) into C++ for the CPU emulation of CUDA
// (cuda_runtime.h in this folder). Built and run by CMake at build time; no Python or Node.
//
//   cuda_emu_cu2cc <input.cu|.cuh> <output>
//
// Rewrites, keeping every line on its line (a #line directive at the top names the original
// file, so compiler messages and __FILE__ point at the .cu source):
//   k<<<grid, block[, smem[, stream]]>>>(args)
//       -> k ->* ::emu::launch_site("k", __FILE__, __LINE__, grid, block...)(args)
//     The configuration ends at the first ">>>" outside brackets, so it may span lines and hold
//     any expression, '>' included. The kernel name is found only for messages.
//   __shared__ T a[n], b[m];      -> auto& a = ::emu::static_shared<T[n]>([] {}); auto& b = ...
//   extern __shared__ T s[];      -> T* const s = ::emu::dynamic_shared<T>();
//   __launch_bounds__(n[, m]) ... f(params) {   -> the body starts with a check of blockDim
//   #include "x.h" (not .cu/.cuh) -> #include "<input's folder>/x.h" (the output lives elsewhere;
//                                    .cuh includes stay relative: their rewrites sit next to it)
// Comments, string and character literals are copied untouched and never scanned.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::string g_in_path;

[[noreturn]] void die(size_t line, const std::string& msg) {
  std::fprintf(stderr, "%s:%zu: cuda_emu_cu2cc: %s\n", g_in_path.c_str(), line, msg.c_str());
  std::exit(1);
}

bool ident_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

struct Source {
  const std::string& s;
  size_t line_at(size_t pos) const {
    size_t n = 1;
    for (size_t i = 0; i < pos && i < s.size(); ++i) n += s[i] == '\n';
    return n;
  }
  // If a comment or literal starts at i, returns the index just past it; else i.
  size_t skip_opaque(size_t i) const {
    if (s.compare(i, 2, "//") == 0) {
      size_t e = s.find('\n', i);
      return e == std::string::npos ? s.size() : e;
    }
    if (s.compare(i, 2, "/*") == 0) {
      size_t e = s.find("*/", i + 2);
      if (e == std::string::npos) die(line_at(i), "unterminated comment");
      return e + 2;
    }
    if (s[i] == '"' || s[i] == '\'') {
      const char q = s[i];
      size_t j = i + 1;
      while (j < s.size() && s[j] != q) {
        if (s[j] == '\\') ++j;
        if (j < s.size() && s[j] == '\n') die(line_at(i), "unterminated literal");
        ++j;
      }
      if (j >= s.size()) die(line_at(i), "unterminated literal");
      return j + 1;
    }
    return i;
  }
  // From i, the index of the first `stop` string found outside (), [] and {} and outside
  // comments and literals; npos if a closing bracket ends the range first or the text ends.
  size_t find_top(size_t i, const std::string& stop) const {
    int depth = 0;
    while (i < s.size()) {
      size_t j = skip_opaque(i);
      if (j != i) {
        i = j;
        continue;
      }
      const char c = s[i];
      if (depth == 0 && s.compare(i, stop.size(), stop) == 0) return i;
      if (c == '(' || c == '[' || c == '{') ++depth;
      if (c == ')' || c == ']' || c == '}') {
        if (depth == 0) return std::string::npos;
        --depth;
      }
      ++i;
    }
    return std::string::npos;
  }
  size_t skip_space(size_t i) const {
    while (i < s.size()) {
      size_t j = skip_opaque(i);
      if (j != i && s[i] != '"' && s[i] != '\'') {
        i = j;
        continue;
      }
      if (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') {
        ++i;
        continue;
      }
      break;
    }
    return i;
  }
};

std::string trim(const std::string& t) {
  size_t a = t.find_first_not_of(" \t\r\n"), b = t.find_last_not_of(" \t\r\n");
  return a == std::string::npos ? std::string() : t.substr(a, b - a + 1);
}

// Joins a piece of source onto one line (newlines become spaces) and reports how many it had.
std::string one_line(const std::string& t, int* newlines) {
  std::string r;
  for (char c : t) {
    if (c == '\n') {
      ++*newlines;
      r += ' ';
    } else if (c != '\r') {
      r += c;
    }
  }
  return r;
}

// Splits at commas outside (), [] and {}, and, when `angles`, outside <> met outside those
// brackets (the template arguments of a type; a launch configuration may compare with '<').
std::vector<std::string> split_top(const std::string& t, bool angles) {
  std::vector<std::string> parts;
  int depth = 0, angle = 0;
  std::string cur;
  for (char c : t) {
    if (c == '(' || c == '[' || c == '{') ++depth;
    if (c == ')' || c == ']' || c == '}') --depth;
    if (angles && depth == 0 && c == '<') ++angle;
    if (angles && depth == 0 && c == '>' && angle > 0) --angle;
    if (c == ',' && depth == 0 && angle == 0) {
      parts.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  parts.push_back(cur);
  return parts;
}

// The kernel expression that ends `out` (an identifier, possibly qualified, possibly with a
// template argument list), for messages only.
std::string kernel_name_before(const std::string& out) {
  size_t e = out.size();
  while (e > 0 && (out[e - 1] == ' ' || out[e - 1] == '\t' || out[e - 1] == '\n')) --e;
  size_t b = e;
  if (b > 0 && out[b - 1] == '>') {
    int depth = 0, parens = 0;  // '<' and '>' inside parentheses are comparisons
    while (b > 0) {
      const char c = out[--b];
      if (c == ')') ++parens;
      if (c == '(') --parens;
      if (parens == 0 && c == '>') ++depth;
      if (parens == 0 && c == '<' && --depth == 0) break;
      if (c == ';' || c == '{' || c == '}') return "?";
    }
  }
  while (b > 0 && (ident_char(out[b - 1]) || out[b - 1] == ':')) --b;
  std::string name = trim(out.substr(b, e - b));
  std::string r;
  for (char c : name) {
    if (c == '\n' || c == '\t') c = ' ';
    if (c == '"' || c == '\\') continue;
    r += c;
  }
  return r.empty() ? "?" : r;
}

std::string dir_of(const std::string& path) {
  size_t k = path.find_last_of('/');
  return k == std::string::npos ? std::string(".") : path.substr(0, k);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

class Rewriter {
 public:
  explicit Rewriter(const std::string& s) : src_{s}, s_(s) {}

  std::string run() {
    std::string quoted;  // the path as a string literal
    for (char ch : g_in_path) {
      if (ch == '"' || ch == '\\') quoted += '\\';
      quoted += ch;
    }
    out_ = "#line 1 \"" + quoted + "\"\n";
    size_t i = 0;
    bool line_start = true;
    while (i < s_.size()) {
      const size_t j = src_.skip_opaque(i);
      if (j != i) {
        out_.append(s_, i, j - i);
        i = j;
        line_start = false;
        continue;
      }
      const char c = s_[i];
      if (line_start && c == '#') {
        i = directive(i);
        continue;
      }
      if (c == '\n') line_start = true;
      else if (c != ' ' && c != '\t' && c != '\r') line_start = false;
      if (s_.compare(i, 3, "<<<") == 0) {
        i = launch(i);
        continue;
      }
      if (ident_char(c) && (i == 0 || !ident_char(s_[i - 1]))) {
        size_t e = i;
        while (e < s_.size() && ident_char(s_[e])) ++e;
        const std::string word = s_.substr(i, e - i);
        if (word == "__shared__") {
          i = shared(i, e);
          continue;
        }
        if (word == "__launch_bounds__") {
          i = launch_bounds(i, e);
          continue;
        }
        out_ += word;
        i = e;
        continue;
      }
      out_ += c;
      ++i;
    }
    return out_;
  }

 private:
  const Source src_;
  const std::string& s_;
  std::string out_;

  // A preprocessor line: quoted includes of plain headers become absolute paths.
  size_t directive(size_t i) {
    size_t e = s_.find('\n', i);
    if (e == std::string::npos) e = s_.size();
    std::string text = s_.substr(i, e - i);
    size_t k = text.find_first_not_of(" \t", 1);
    if (k != std::string::npos && text.compare(k, 7, "include") == 0) {
      size_t q0 = text.find('"', k + 7);
      size_t q1 = q0 == std::string::npos ? q0 : text.find('"', q0 + 1);
      if (q1 != std::string::npos) {
        const std::string name = text.substr(q0 + 1, q1 - q0 - 1);
        if (!name.empty() && name[0] != '/' && !ends_with(name, ".cuh") && !ends_with(name, ".cu"))
          text = text.substr(0, q0 + 1) + dir_of(g_in_path) + "/" + name + text.substr(q1);
      }
    }
    out_ += text;
    return e;
  }

  size_t launch(size_t i) {
    const size_t line = src_.line_at(i);
    const size_t end = src_.find_top(i + 3, ">>>");
    if (end == std::string::npos) die(line, "no '>>>' closes this '<<<'");
    const std::string cfg = s_.substr(i + 3, end - i - 3);
    if (split_top(cfg, false).size() < 2)
      die(line, "a launch configuration has 2 to 4 parts: <<<grid, block[, smem[, stream]]>>>");
    const size_t open = src_.skip_space(end + 3);
    if (open >= s_.size() || s_[open] != '(') die(line, "a kernel launch needs '(' after '>>>'");
    const std::string name = kernel_name_before(out_);
    // The configuration is copied as written (its newlines included): lines stay in place.
    out_ += " ->* ::emu::launch_site(\"" + name + "\", __FILE__, __LINE__, " + cfg + ")";
    return end + 3;
  }

  // __shared__ at i (word ends at e): a static or (after `extern`) dynamic declaration.
  size_t shared(size_t i, size_t e) {
    const size_t line = src_.line_at(i);
    const size_t semi = src_.find_top(e, ";");
    if (semi == std::string::npos) die(line, "__shared__ declaration without ';'");
    int newlines = 0;
    const std::string decl = trim(one_line(s_.substr(e, semi - e), &newlines));
    // `extern` right before (already copied): a dynamic shared array.
    size_t b = out_.size();
    while (b > 0 && (out_[b - 1] == ' ' || out_[b - 1] == '\t')) --b;
    const bool is_extern = b >= 6 && out_.compare(b - 6, 6, "extern") == 0 &&
                           (b == 6 || !ident_char(out_[b - 7]));
    std::string repl;
    if (is_extern) {
      out_.resize(b - 6);
      const size_t lb = decl.find('[');
      if (lb == std::string::npos || trim(decl.substr(lb)) != "[]")
        die(line, "extern __shared__ must declare an array of unknown size: T name[]");
      std::string head = trim(decl.substr(0, lb));
      size_t n = head.size();
      while (n > 0 && ident_char(head[n - 1])) --n;
      const std::string type = trim(head.substr(0, n)), name = head.substr(n);
      if (type.empty() || name.empty()) die(line, "cannot read this extern __shared__ declaration");
      repl = type + "* const " + name + " = ::emu::dynamic_shared<" + type + ">();";
    } else {
      std::vector<std::string> parts = split_top(decl, true);
      std::string type;
      for (size_t k = 0; k < parts.size(); ++k) {
        std::string d = trim(parts[k]);
        if (d.find('=') != std::string::npos) die(line, "a __shared__ variable cannot have an initializer");
        const size_t lb = d.find('[');
        std::string head = trim(lb == std::string::npos ? d : d.substr(0, lb));
        const std::string dims = lb == std::string::npos ? "" : d.substr(lb);
        size_t n = head.size();
        while (n > 0 && ident_char(head[n - 1])) --n;
        const std::string name = head.substr(n);
        if (k == 0) type = trim(head.substr(0, n));
        else if (!trim(head.substr(0, n)).empty()) die(line, "unsupported __shared__ declarator: " + d);
        if (type.empty() || name.empty()) die(line, "cannot read this __shared__ declaration");
        repl += (k ? " " : "") + std::string("auto& ") + name + " = ::emu::static_shared<" + type +
                dims + ">([] {});";
      }
    }
    out_ += repl;
    out_.append(size_t(newlines), '\n');
    return semi + 1;
  }

  // __launch_bounds__(args) at i: copied (the macro is empty), and the next function body
  // starts with a check of the block size against the first argument.
  size_t launch_bounds(size_t i, size_t e) {
    const size_t line = src_.line_at(i);
    const size_t open = src_.skip_space(e);
    if (open >= s_.size() || s_[open] != '(') die(line, "__launch_bounds__ without '('");
    const size_t close = src_.find_top(open + 1, ")");
    if (close == std::string::npos) die(line, "__launch_bounds__( without ')'");
    const std::string bound = trim(split_top(s_.substr(open + 1, close - open - 1), false)[0]);
    // The parameter list, then the body's '{' (a declaration without a body gets no check).
    const size_t params = s_.find('(', close + 1);
    const size_t params_end = params == std::string::npos ? params : src_.find_top(params + 1, ")");
    if (params_end == std::string::npos) die(line, "cannot find the kernel's parameter list");
    const size_t body = src_.skip_space(params_end + 1);
    out_.append(s_, i, params_end + 1 - i);
    if (body < s_.size() && s_[body] == '{') {
      out_.append(s_, params_end + 1, body + 1 - (params_end + 1));
      out_ += " ::emu::check_launch_bounds(" + bound + ", __FILE__, __LINE__);";
      return body + 1;
    }
    return params_end + 1;
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: cuda_emu_cu2cc <input.cu|.cuh> <output>\n");
    return 2;
  }
  g_in_path = argv[1];
  std::ifstream in(g_in_path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cuda_emu_cu2cc: cannot read %s\n", argv[1]);
    return 1;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string src = ss.str();
  const std::string out = Rewriter(src).run();
  // Written only when changed: an unchanged output keeps its time stamp (no needless rebuilds).
  {
    std::ifstream old(argv[2], std::ios::binary);
    if (old) {
      std::stringstream o;
      o << old.rdbuf();
      if (o.str() == out) return 0;
    }
  }
  std::ofstream f(argv[2], std::ios::binary | std::ios::trunc);
  f << out;
  if (!f) {
    std::fprintf(stderr, "cuda_emu_cu2cc: cannot write %s\n", argv[2]);
    return 1;
  }
  return 0;
}
