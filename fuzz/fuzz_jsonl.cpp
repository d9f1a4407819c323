// The input readers of curate and prepare: decompression (chosen by magic bytes: plain, gzip,
// zstd), line and paragraph splitting, JSONL records (text and id fields, invalid UTF-8, NUL
// bytes, records over the size limit). The first byte picks the reader settings.
#include "data/reader.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dsv3;
  fuzz::init_once();
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  const std::string path = fuzz::write_input(data + 1, size - 1, "input.jsonl");
  ReaderConfig cfg;
  cfg.format = mode & 1 ? InputFormat::Jsonl : InputFormat::Text;
  cfg.text_unit = TextUnit((mode >> 1) % 3);
  cfg.max_doc_bytes = mode & 8 ? 64 : 1 << 20;
  if (mode & 16) cfg.id_key = "";
  fuzz::run_expecting_errors([&] {
    RecordReader reader(path, cfg);
    RawRecord raw;
    for (int n = 0; n < 4096 && reader.next(raw); n++) {
      Record rec;
      std::string detail;
      parse_record(raw, reader.format(), cfg, path, rec, detail);
    }
  });
  return 0;
}
