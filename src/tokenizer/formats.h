// Tokenizer files (D9): dsv3's own versioned format, and the formats other tools read and write.
//
//   dsv3       one binary file (".dsv3tok"), described in formats.cpp; everything a Tokenizer holds
//   GPT-2      encoder.json (token -> id) + vocab.bpe (merges), tokens in GPT-2's printable byte
//              alphabet (bytes_to_unicode)
//   tiktoken   ".tiktoken": one "base64(bytes) rank" line per token; the rank is the id and the
//              merge priority. No merges are stored: they are derived (see load_tiktoken_file)
//   HF         tokenizer.json with a BPE model and a ByteLevel pre-tokenizer (alone or after
//              Split regexes)
//
// Every loader returns a Tokenizer that passed validate_tokenizer; every problem (missing,
// truncated, corrupt or foreign file) is a dsv3::Error naming the file.
#pragma once
#include <string>
#include <string_view>

#include "tokenizer/bpe.h"

namespace dsv3 {

// GPT-2's byte <-> printable character table: bytes '!'..'~', 0xa1..0xac and 0xae..0xff stand for
// themselves, the other 68 bytes for U+0100.. in byte order. Token text is UTF-8 of those.
std::string bytes_to_gpt2_text(std::string_view bytes);
// False when `text` holds a character outside the table (or is not UTF-8).
bool gpt2_text_to_bytes(std::string_view text, std::string& bytes);

Tokenizer load_dsv3_tokenizer(const std::string& path);
void save_dsv3_tokenizer(const std::string& path, const Tokenizer& t);  // atomic

// Entries of encoder.json that no merge makes and that are not single bytes are special tokens
// when they look like one (<...>) or are not in the byte alphabet; GPT-2's <|endoftext|> is.
Tokenizer load_gpt2_files(const std::string& encoder_json, const std::string& vocab_bpe,
                          const PretokSpec& pretok);
void export_gpt2_files(const std::string& dir, const Tokenizer& t);  // dir/encoder.json, vocab.bpe

// Merges are derived like tiktoken's own converters do: a token of rank r is the merge of the two
// parts that BPE with ranks < r leaves of its bytes. ignore_merges is set (tiktoken's rule).
// <|endoftext|> is appended after the last rank as bos and eos, as tiktoken's gpt2 encoding does.
Tokenizer load_tiktoken_file(const std::string& path, const PretokSpec& pretok);
// Needs ids in merge order (each merge makes a larger id than its parts): true of trained dsv3,
// GPT-2 and tiktoken vocabularies. Special tokens are not part of the format and are left out.
void export_tiktoken_file(const std::string& path, const Tokenizer& t);

Tokenizer load_hf_tokenizer_json(const std::string& path);
void export_hf_tokenizer_json(const std::string& path, const Tokenizer& t);

// A dsv3 file, tokenizer.json, encoder.json or vocab.bpe (the other file beside it), a .tiktoken
// file, or a directory holding one of them. `pretok` ("" = gpt2) is the pre-tokenizer of the
// formats that store none (GPT-2 files, .tiktoken); for the others it must be "" or match.
// `what` (optional) receives a one-line description of what was loaded.
Tokenizer load_tokenizer_any(const std::string& path, const std::string& pretok = "",
                             std::string* what = nullptr);

}  // namespace dsv3
