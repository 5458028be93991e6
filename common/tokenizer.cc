// tokenizer.cc — tokenizer.h over libsentencepiece's C++ API (the one C++ file of moed).
// Exceptions never cross into C: every entry point catches them and returns a moe_status.
extern "C" {
#include "status.h" // a C header: its functions have C linkage
}
#include "tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

struct tokenizer {
    sentencepiece::SentencePieceProcessor sp;
    int byte_id[256];              // the piece <0xXX> of each byte
    std::vector<std::string> text; // (V) the bytes each piece decodes to
};

namespace {

/* Length of the valid UTF-8 character at p (n bytes left), or 0 when the bytes there are not
 * one (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF). */
size_t utf8_char(const uint8_t *p, size_t n) {
    uint8_t c = p[0];
    if (c < 0x80) return 1;
    size_t len;
    uint8_t lo = 0x80, hi = 0xBF; // the allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else return 0;
    if (n < len || p[1] < lo || p[1] > hi) return 0;
    for (size_t k = 2; k < len; k++)
        if (p[k] < 0x80 || p[k] > 0xBF) return 0;
    return len;
}

/* Whether the character of `len` bytes at p goes to SentencePiece: not NUL, not a newline (the
 * line break between training sentences), not U+2581 (SentencePiece's own space marker). */
bool sp_char(const uint8_t *p, size_t len) {
    if (len == 0) return false;
    if (len == 1) return p[0] != 0 && p[0] != '\n';
    return !(len == 3 && p[0] == 0xE2 && p[1] == 0x96 && p[2] == 0x81);
}

/* Cuts text into maximal runs of SentencePiece characters (run(start, len)) and single
 * bytes that are not part of one (byte(b)), in order. */
template <class Run, class Byte>
void split_text(const uint8_t *text, size_t n, Run run, Byte byte) {
    size_t i = 0;
    while (i < n) {
        size_t start = i, len;
        while (i < n && sp_char(text + i, len = utf8_char(text + i, n - i))) i += len;
        if (i > start) run(start, i - start);
        if (i < n) byte(text[i++]);
    }
}

class TextLines : public sentencepiece::SentenceIterator {
  public:
    explicit TextLines(const tokenizer_texts *t) : texts_(t) { fill(); }
    bool done() const override { return pos_ >= lines_.size() && text_ >= texts_->n; }
    void Next() override {
        if (++pos_ >= lines_.size()) fill();
    }
    const std::string &value() const override { return lines_[pos_]; }
    sentencepiece::util::Status status() const override { return {}; }

  private:
    // The runs of the next non-empty text (the trainer sees one text's lines at a time).
    void fill() {
        lines_.clear();
        pos_ = 0;
        while (lines_.empty() && text_ < texts_->n) {
            const uint8_t *b = texts_->bytes[text_];
            split_text(
                b, texts_->lens[text_++],
                [&](size_t s, size_t l) { lines_.emplace_back((const char *)b + s, l); },
                [](uint8_t) {});
        }
    }
    const tokenizer_texts *texts_;
    int text_ = 0;
    std::vector<std::string> lines_;
    size_t pos_ = 0;
};

/* The decoded bytes of piece `id`: a byte piece its byte, a normal piece its text with U+2581
 * back to a space, control and unknown pieces nothing. */
std::string piece_text(const sentencepiece::SentencePieceProcessor &sp, int id) {
    if (sp.IsControl(id) || sp.IsUnknown(id) || sp.IsUnused(id)) return "";
    const std::string &p = sp.IdToPiece(id);
    if (sp.IsByte(id)) {
        unsigned v = 0;
        std::sscanf(p.c_str(), "<0x%2X>", &v);
        return std::string(1, (char)v);
    }
    std::string out;
    for (size_t k = 0; k < p.size(); k++) {
        if (p.compare(k, 3, "\xE2\x96\x81") == 0) {
            out += ' ';
            k += 2;
        } else {
            out += p[k];
        }
    }
    return out;
}

moe_status grow(uint32_t **ids, size_t *cap, size_t need) {
    if (need <= *cap) return MOE_OK;
    size_t c = *cap ? *cap : 1024;
    while (c < need) c *= 2;
    void *p = std::realloc(*ids, c * sizeof **ids);
    if (!p) return moe_fail(MOE_ENOMEM, "tokenizer: out of memory");
    *ids = (uint32_t *)p;
    *cap = c;
    return MOE_OK;
}

} // namespace

extern "C" moe_status tokenizer_train(const tokenizer_texts *texts, int vocab, const char *type,
                                      uint8_t **model, size_t *model_len) {
    std::string t = type ? type : "bpe";
    if (t != "bpe" && t != "unigram")
        return moe_fail(MOE_EINVAL, "tokenizer: --type %s (bpe or unigram)", t.c_str());
    if (vocab < 260 || vocab > 65536)
        return moe_fail(MOE_EINVAL, "tokenizer: --vocab %d (need 260 to 65536, model.vocab's "
                        "bounds: 256 byte pieces, the unknown piece and learned ones)", vocab);
    // docs/model.md lists these options: change them only together with it.
    std::unordered_map<std::string, std::string> kw = {
        {"model_type", t}, {"vocab_size", std::to_string(vocab)},
        {"byte_fallback", "true"}, {"character_coverage", "1.0"},
        {"normalization_rule_name", "identity"}, {"add_dummy_prefix", "false"},
        {"remove_extra_whitespaces", "false"}, {"split_digits", "false"},
        {"unk_id", "0"}, {"bos_id", "-1"}, {"eos_id", "-1"}, {"pad_id", "-1"},
        {"num_threads", "1"}, {"shuffle_input_sentence", "false"},
        {"input_sentence_size", "0"}, {"minloglevel", "2"}};
    try {
        sentencepiece::SetRandomGeneratorSeed(20);
        TextLines lines(texts);
        std::string out;
        auto st = sentencepiece::SentencePieceTrainer::Train(kw, &lines, &out);
        if (!st.ok()) {
            // "Internal: ./src/x.cc(660) [check] Reason." says its reason last
            std::string why = st.ToString();
            size_t k = why.rfind("] ");
            if (k != std::string::npos) why = why.substr(k + 2);
            return moe_fail(MOE_EINVAL, "tokenizer: %s", why.c_str());
        }
        *model = (uint8_t *)std::malloc(out.size());
        if (!*model) return moe_fail(MOE_ENOMEM, "tokenizer: out of memory");
        std::memcpy(*model, out.data(), out.size());
        *model_len = out.size();
        return MOE_OK;
    } catch (const std::exception &e) {
        return moe_fail(MOE_EINTERNAL, "tokenizer: training failed: %s", e.what());
    }
}

extern "C" moe_status tokenizer_load(const uint8_t *model, size_t len, const char *origin,
                                     tokenizer **out) {
    tokenizer *t = new (std::nothrow) tokenizer;
    if (!t) return moe_fail(MOE_ENOMEM, "tokenizer: out of memory");
    try {
        auto st = t->sp.LoadFromSerializedProto(std::string((const char *)model, len));
        if (!st.ok()) {
            delete t;
            return moe_fail(MOE_EFORMAT, "%s: not a SentencePiece tokenizer (moectl tokenizer "
                            "train makes one)", origin);
        }
        for (int b = 0; b < 256; b++) {
            char name[8];
            std::snprintf(name, sizeof name, "<0x%02X>", b);
            t->byte_id[b] = t->sp.PieceToId(name);
            if (!t->sp.IsByte(t->byte_id[b])) {
                delete t;
                return moe_fail(MOE_EFORMAT, "%s: tokenizer without byte fallback (no piece %s)",
                                origin, name);
            }
        }
        int v = t->sp.GetPieceSize();
        t->text.resize((size_t)v);
        for (int id = 0; id < v; id++) t->text[(size_t)id] = piece_text(t->sp, id);
    } catch (const std::exception &e) {
        delete t;
        return moe_fail(MOE_EFORMAT, "%s: tokenizer: %s", origin, e.what());
    }
    *out = t;
    return MOE_OK;
}

extern "C" void tokenizer_free(tokenizer *t) { delete t; }

extern "C" int tokenizer_vocab(const tokenizer *t) { return (int)t->text.size(); }

extern "C" int tokenizer_token_bytes(const tokenizer *t, int id) {
    if (id < 0 || (size_t)id >= t->text.size()) return 0;
    return (int)t->text[(size_t)id].size();
}

extern "C" size_t tokenizer_decode_token(const tokenizer *t, int id, uint8_t *out) {
    if (id < 0 || (size_t)id >= t->text.size()) return 0;
    const std::string &s = t->text[(size_t)id];
    std::memcpy(out, s.data(), s.size());
    return s.size();
}

extern "C" moe_status tokenizer_encode(const tokenizer *t, const uint8_t *text, size_t n,
                                       uint32_t **ids, size_t *n_ids, size_t *cap) {
    moe_status res = MOE_OK;
    try {
        std::vector<int> piece_ids;
        auto push = [&](int id) {
            if (res == MOE_OK && (res = grow(ids, cap, *n_ids + 1)) == MOE_OK)
                (*ids)[(*n_ids)++] = (uint32_t)id;
        };
        split_text(
            text, n,
            [&](size_t s, size_t l) {
                piece_ids.clear();
                auto st = t->sp.Encode(std::string((const char *)text + s, l), &piece_ids);
                if (!st.ok() && res == MOE_OK)
                    res = moe_fail(MOE_EINTERNAL, "tokenizer: %s", st.ToString().c_str());
                for (int id : piece_ids) push(id);
            },
            [&](uint8_t b) { push(t->byte_id[b]); });
    } catch (const std::exception &e) {
        return moe_fail(MOE_ENOMEM, "tokenizer: %s", e.what());
    }
    return res;
}
