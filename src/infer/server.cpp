#include "infer/server.h"

#include <httplib.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/timer.h"
#include "infer/request.h"
#include "infer/scheduler.h"
#include "infer/text_stream.h"

namespace dsv3 {

using json = nlohmann::json;

const std::vector<FieldSpec>& server_fields() {
  using S = ServerConfig;
  static const std::vector<FieldSpec> f = {
      field("host", &S::host, "address to bind (127.0.0.1: this machine only; 0.0.0.0: all)"),
      field("port", &S::port, "TCP port (0 = any free port, printed at start)", in_range(0, 65535)),
      field("api_key", &S::api_key, "require 'Authorization: Bearer KEY' on /v1/* (empty = off)"),
      field("served_name", &S::served_name, "model id reported by /v1/models and accepted in requests"),
      field("max_running", &S::max_running, "sequences decoding together (continuous batch)", in_range(1, 1 << 20)),
      field("max_queue", &S::max_queue, "requests waiting beyond the running ones; more get 429", in_range(0, 1 << 20)),
      field("max_batch_tokens", &S::max_batch_tokens,
            "tokens per engine step (prompt chunks + one per decoding sequence)", in_range(1, 1 << 24)),
      field("kv_cache_mb", &S::kv_cache_mb, "latent KV cache budget in MiB; requests wait for room", above(0)),
      field("context", &S::context, "longest sequence, prompt + output (0 = the model's max_seq)", in_range(0, 1 << 24)),
      field("max_tokens_limit", &S::max_tokens_limit, "largest max_tokens a request may ask for", in_range(1, 1 << 24)),
      field("max_prompt_tokens", &S::max_prompt_tokens, "longest prompt accepted (0 = the context)", in_range(0, 1 << 24)),
      field("max_body_kb", &S::max_body_kb, "request body limit in KiB (413 beyond)", in_range(1, 1 << 24)),
      field("speculative", &S::speculative, "MTP speculative decoding (drafts verified by the model)"),
      field("http_threads", &S::http_threads, "HTTP worker threads (0 = max_running + max_queue + 16)", in_range(0, 4096)),
  };
  return f;
}

void validate(const ServerConfig& c) {
  DSV3_CHECK(c.port >= 0 && c.port <= 65535, "port must be in [0, 65535], not ", c.port);
  DSV3_CHECK(!c.host.empty(), "host must not be empty");
  DSV3_CHECK(c.max_running >= 1, "max_running must be >= 1, not ", c.max_running);
  DSV3_CHECK(c.max_queue >= 0, "max_queue must be >= 0, not ", c.max_queue);
  DSV3_CHECK(c.max_batch_tokens >= c.max_running, "max_batch_tokens (", c.max_batch_tokens,
             ") must be >= max_running (", c.max_running, "): every running sequence needs a row");
  DSV3_CHECK(c.kv_cache_mb > 0, "kv_cache_mb must be > 0, not ", c.kv_cache_mb);
  DSV3_CHECK(c.context >= 0 && c.max_prompt_tokens >= 0, "context and max_prompt_tokens must be >= 0");
  DSV3_CHECK(c.max_tokens_limit >= 1, "max_tokens_limit must be >= 1, not ", c.max_tokens_limit);
  DSV3_CHECK(c.max_body_kb >= 1, "max_body_kb must be >= 1, not ", c.max_body_kb);
  DSV3_CHECK(c.http_threads >= 0, "http_threads must be >= 0, not ", c.http_threads);
  DSV3_CHECK(!c.served_name.empty(), "served_name must not be empty");
}

bool equal_constant_time(const std::string& a, const std::string& b) {
  // every byte of the longer one is read whatever the contents; the lengths are mixed in
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; i++) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

namespace {

std::atomic<bool> g_stop{false};
extern "C" void on_stop_signal(int) { g_stop.store(true); }

// OpenAI's error object.
void send_error(httplib::Response& res, int status, const std::string& message,
                const char* type = "invalid_request_error", const std::string& param = "",
                const char* code = nullptr) {
  json e = {{"message", message}, {"type", type}, {"param", param.empty() ? json() : json(param)},
            {"code", code ? json(code) : json()}};
  res.status = status;
  res.set_content(json{{"error", e}}.dump(-1, ' ', false, json::error_handler_t::replace),
                  "application/json");
}

struct Metrics {
  std::mutex m;
  std::deque<double> latency, ttft;  // the last kWindow requests, seconds
  double latency_sum = 0, ttft_sum = 0;
  int64_t latency_count = 0, ttft_count = 0;
  std::map<int, int64_t> responses;  // by status
  static constexpr size_t kWindow = 2048;
  void add(std::deque<double>& q, double& sum, int64_t& count, double v) {
    std::lock_guard<std::mutex> g(m);
    q.push_back(v);
    if (q.size() > kWindow) q.pop_front();
    sum += v;
    count++;
  }
  void count_status(int status) {
    std::lock_guard<std::mutex> g(m);
    responses[status]++;
  }
};

double quantile(std::vector<double> v, double q) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const double pos = q * double(v.size() - 1);
  const size_t i = size_t(pos);
  const double f = pos - double(i);
  return i + 1 < v.size() ? v[i] * (1 - f) + v[i + 1] * f : v[i];
}

// Text from the engine thread to the request's HTTP thread.
struct Channel {
  std::mutex m;
  std::condition_variable cv;
  std::string text;  // produced, not yet sent
  bool done = false;
  FinishReason why = FinishReason::Stop;
  int completion_tokens = 0;
  std::atomic<bool> cancel{false};
  bool started = false;  // joined the running batch (engine thread)
  double t_submit = 0, t_first = 0;
};

class Server {
 public:
  Server(const ModelWeights& w, const TextCodec& codec, const ServerConfig& cfg)
      : w_(w), codec_(codec), cfg_(cfg) {
    DecodeConfig dc;
    dc.max_rows = cfg.max_batch_tokens;
    dc.max_seqs = cfg.max_running;
    dc.kv_cache_bytes = size_t(cfg.kv_cache_mb * 1024 * 1024);
    dc.max_context = cfg.context;
    dc.mtp = cfg.speculative;
    engine_ = std::make_unique<DecodeEngine>(w, dc);
    sched_ = std::make_unique<Scheduler>(*engine_, SchedulerConfig{cfg.max_running, cfg.speculative});
    ctx_ = engine_->max_context();
    created_ = int64_t(std::time(nullptr));
  }

  void run(const std::function<void(int)>& on_listening);

 private:
  void engine_loop();
  void routes();
  bool authorized(const httplib::Request& req, httplib::Response& res);
  void completion(const httplib::Request& req, httplib::Response& res, bool chat);
  std::string metrics_text();

  const ModelWeights& w_;
  const TextCodec& codec_;
  ServerConfig cfg_;
  std::unique_ptr<DecodeEngine> engine_;
  std::unique_ptr<Scheduler> sched_;
  int ctx_ = 0;
  int64_t created_ = 0;
  httplib::Server svr_;

  std::mutex inbox_m_;
  std::condition_variable inbox_cv_;
  std::deque<std::unique_ptr<GenRequest>> inbox_;
  bool engine_stop_ = false;
  std::atomic<bool> draining_{false};
  std::atomic<int> active_{0};  // requests admitted to the queue and not yet answered
  std::atomic<int> queued_{0};  // submitted, not yet in the running batch
  std::atomic<int> in_batch_{0};  // in the running batch
  // engine-side gauges, published after every step
  std::atomic<int> pages_used_{0};
  std::atomic<int64_t> gen_tokens_{0}, prompt_tokens_{0}, steps_{0}, drafts_{0}, accepted_{0};
  std::atomic<double> tokens_per_s_{0};
  std::atomic<int64_t> next_id_{1};
  Metrics metrics_;
};

void Server::engine_loop() {
  std::deque<std::pair<double, int64_t>> rate;  // (time, generated tokens) over the last 10 s
  for (;;) {
    {
      std::unique_lock<std::mutex> g(inbox_m_);
      inbox_cv_.wait(g, [&] { return !inbox_.empty() || !sched_->idle() || engine_stop_; });
      if (engine_stop_ && inbox_.empty() && sched_->idle()) break;
      while (!inbox_.empty()) {
        sched_->add(std::move(inbox_.front()));
        inbox_.pop_front();
      }
    }
    try {
      sched_->step();
    } catch (const std::exception& e) {  // never leave clients hanging: fail what is running
      std::fprintf(stderr, "dsv3 serve: engine error: %s (cancelling %d requests)\n", e.what(),
                   sched_->running() + sched_->waiting());
      sched_->cancel_all();
    }
    const SchedulerStats& st = sched_->stats();
    pages_used_ = engine_->cache().pages() - engine_->cache().pages_free();
    gen_tokens_ = st.generated_tokens;
    prompt_tokens_ = st.prompt_tokens;
    steps_ = st.steps;
    drafts_ = st.drafts;
    accepted_ = st.accepted;
    const double now = now_seconds();
    rate.emplace_back(now, st.generated_tokens);
    while (rate.size() > 2 && rate.front().first < now - 10) rate.pop_front();
    const double dt = rate.back().first - rate.front().first;
    tokens_per_s_ = dt > 0 ? double(rate.back().second - rate.front().second) / dt : 0.0;
  }
}

bool Server::authorized(const httplib::Request& req, httplib::Response& res) {
  if (cfg_.api_key.empty()) return true;
  const std::string h = req.get_header_value("Authorization");
  const std::string prefix = "Bearer ";
  const std::string token = h.rfind(prefix, 0) == 0 ? h.substr(prefix.size()) : std::string();
  if (equal_constant_time(token, cfg_.api_key)) return true;
  send_error(res, 401, "missing or invalid API key (send 'Authorization: Bearer KEY')",
             "invalid_request_error", "", "invalid_api_key");
  return false;
}

void Server::completion(const httplib::Request& req, httplib::Response& res, bool chat) {
  if (!authorized(req, res)) return;
  if (draining_) return send_error(res, 503, "the server is shutting down", "server_error");
  json body;
  try {
    body = json::parse(req.body);
  } catch (const json::exception& e) {
    return send_error(res, 400, std::string("the body is not valid JSON: ") + e.what());
  }
  CompletionRequest p;
  try {
    const RequestLimits lim{ctx_, w_.config().vocab, cfg_.max_prompt_tokens, cfg_.max_tokens_limit};
    p = parse_completion_request(body, chat, codec_, lim, uint64_t(next_id_.load()) * 7919u);
  } catch (const BadRequest& e) {
    return send_error(res, 400, e.message, "invalid_request_error", e.param);
  }
  if (p.model && *p.model != cfg_.served_name)
    return send_error(res, 404, "the model '" + *p.model + "' does not exist (this server has '" +
                      cfg_.served_name + "')", "invalid_request_error", "model", "model_not_found");
  auto ch = std::make_shared<Channel>();
  auto r = std::make_unique<GenRequest>();
  r->prompt = p.prompt;
  r->sampling = p.sampling;
  r->max_tokens = p.max_tokens;
  r->stop_ids = p.stop_ids;
  auto text = std::make_shared<TextStream>(p.stop);
  // engine thread: decode, apply stop strings, hand the text over
  r->on_token = [this, ch, text](int32_t id) {
    const std::string piece = text->feed(codec_.decode(std::span<const int32_t>(&id, 1)));
    std::lock_guard<std::mutex> g(ch->m);
    if (ch->completion_tokens++ == 0) ch->t_first = now_seconds();
    ch->text += piece;
    ch->cv.notify_all();
    return !text->stopped();
  };
  r->on_start = [this, ch] {
    ch->started = true;
    queued_--;
    in_batch_++;
  };
  r->on_done = [this, ch, text](FinishReason why) {
    if (ch->started) in_batch_--;
    else queued_--;
    std::lock_guard<std::mutex> g(ch->m);
    ch->text += text->flush();
    ch->done = true;
    ch->why = why;
    ch->cv.notify_all();
    const double now = now_seconds();
    if (why != FinishReason::Cancelled) {
      metrics_.add(metrics_.latency, metrics_.latency_sum, metrics_.latency_count, now - ch->t_submit);
      if (ch->t_first > 0)
        metrics_.add(metrics_.ttft, metrics_.ttft_sum, metrics_.ttft_count, ch->t_first - ch->t_submit);
    }
  };
  r->cancelled = [ch] { return ch->cancel.load(); };
  const std::string why = sched_->check(*r);  // reads only fixed settings of the engine
  if (!why.empty()) return send_error(res, 400, why, "invalid_request_error", chat ? "messages" : "prompt");
  {
    std::lock_guard<std::mutex> g(inbox_m_);
    // waiting beyond the free places of the running batch
    if (queued_.load() >= cfg_.max_queue + std::max(0, cfg_.max_running - in_batch_.load()))
      return send_error(res, 429, "the server is at capacity (" + std::to_string(cfg_.max_queue) +
                        " requests queued); retry later", "rate_limit_error");
    ch->t_submit = now_seconds();
    inbox_.push_back(std::move(r));
    active_++;
    queued_++;
  }
  inbox_cv_.notify_one();

  const std::string id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_id_++);
  const int64_t created = int64_t(std::time(nullptr));
  const int prompt_tokens = int(p.prompt.size());
  const std::string model = cfg_.served_name;
  auto usage = [prompt_tokens](int completion) {
    return json{{"prompt_tokens", prompt_tokens}, {"completion_tokens", completion},
                {"total_tokens", prompt_tokens + completion}};
  };
  auto finish_name = [](FinishReason f) { return f == FinishReason::Length ? "length" : "stop"; };
  auto dump = [](const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); };
  // Waits for text or the end; false when nothing arrived within `seconds`.
  auto wait = [ch](double seconds) {
    std::unique_lock<std::mutex> g(ch->m);
    return ch->cv.wait_for(g, std::chrono::duration<double>(seconds),
                           [&] { return ch->done || !ch->text.empty(); });
  };
  auto releaser = [this, ch](bool) {
    ch->cancel = true;  // a no-op after a normal finish; frees the sequence otherwise
    active_--;
  };
  if (p.stream) {
    res.set_header("Cache-Control", "no-cache");
    const bool include_usage = p.include_usage;
    res.set_chunked_content_provider(
        "text/event-stream",
        [=](size_t, httplib::DataSink& sink) {
          auto event = [&](const json& j) {
            const std::string s = "data: " + dump(j) + "\n\n";
            return sink.write(s.data(), s.size());
          };
          auto chunk = [&](const std::string& piece, const json& finish) {
            json choice = {{"index", 0}, {"finish_reason", finish}};
            if (chat) {
              choice["delta"] = piece.empty() && finish.is_null() ? json{{"role", "assistant"}, {"content", ""}}
                                                                  : json{{"content", piece}};
              if (!finish.is_null() && piece.empty()) choice["delta"] = json::object();
            } else {
              choice["text"] = piece;
              choice["logprobs"] = nullptr;
            }
            json j = {{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"},
                      {"created", created}, {"model", model}, {"choices", json::array({choice})}};
            if (include_usage) j["usage"] = nullptr;
            return event(j);
          };
          if (chat && !chunk("", json())) return ch->cancel = true, false;  // the role first
          for (;;) {
            wait(0.1);
            std::string piece;
            bool done;
            FinishReason why;
            int completion;
            {
              std::lock_guard<std::mutex> g(ch->m);
              piece.swap(ch->text);
              done = ch->done;
              why = ch->why;
              completion = ch->completion_tokens;
            }
            if (!piece.empty() && !chunk(piece, json())) return ch->cancel = true, false;
            if (piece.empty() && !done && !sink.is_writable()) return ch->cancel = true, false;
            if (!done) continue;
            if (why == FinishReason::Cancelled) return false;
            if (!chunk("", finish_name(why))) return false;
            if (include_usage &&
                !event({{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"},
                        {"created", created}, {"model", model}, {"choices", json::array()},
                        {"usage", usage(completion)}}))
              return false;
            const std::string end = "data: [DONE]\n\n";
            sink.write(end.data(), end.size());
            sink.done();
            return true;
          }
        },
        releaser);
  } else {
    // Whitespace before the JSON while waiting: valid JSON to any parser, and the write fails
    // once the client has gone, which cancels the sequence (cpp-httplib cannot report a closed
    // connection otherwise).
    res.set_chunked_content_provider(
        "application/json",
        [=](size_t, httplib::DataSink& sink) {
          for (;;) {
            bool done;
            {
              std::unique_lock<std::mutex> g(ch->m);
              ch->cv.wait_for(g, std::chrono::milliseconds(100), [&] { return ch->done; });
              done = ch->done;
            }
            if (!done) {
              if (!sink.write(" ", 1)) return ch->cancel = true, false;
              continue;
            }
            if (ch->why == FinishReason::Cancelled) return false;
            json choice = {{"index", 0}, {"finish_reason", finish_name(ch->why)}};
            if (chat) choice["message"] = {{"role", "assistant"}, {"content", ch->text}};
            else choice["text"] = ch->text, choice["logprobs"] = nullptr;
            const json j = {{"id", id}, {"object", chat ? "chat.completion" : "text_completion"},
                            {"created", created}, {"model", model},
                            {"choices", json::array({choice})}, {"usage", usage(ch->completion_tokens)}};
            const std::string s = dump(j);
            sink.write(s.data(), s.size());
            sink.done();
            return true;
          }
        },
        releaser);
  }
}

std::string Server::metrics_text() {
  std::string out;
  auto metric = [&](const char* name, const char* type, const char* help, double v) {
    char buf[512];
    std::snprintf(buf, sizeof buf, "# HELP %s %s\n# TYPE %s %s\n%s %.9g\n", name, help, name, type,
                  name, v);
    out += buf;
  };
  metric("dsv3_queue_length", "gauge", "Requests waiting to join the running batch.", queued_.load());
  metric("dsv3_running_sequences", "gauge", "Sequences in the running batch.", in_batch_.load());
  metric("dsv3_kv_cache_pages_used", "gauge", "Latent KV cache pages holding tokens.", pages_used_.load());
  metric("dsv3_kv_cache_pages_total", "gauge", "Latent KV cache pages in the budget.",
         engine_->cache().pages());
  metric("dsv3_generation_tokens_per_second", "gauge",
         "Generated tokens per second over the last 10 seconds.", tokens_per_s_.load());
  metric("dsv3_generation_tokens_total", "counter", "Tokens generated.", double(gen_tokens_.load()));
  metric("dsv3_prompt_tokens_total", "counter", "Prompt tokens prefilled.", double(prompt_tokens_.load()));
  metric("dsv3_engine_steps_total", "counter", "Engine steps (one batched forward each).",
         double(steps_.load()));
  if (cfg_.speculative) {
    metric("dsv3_spec_drafts_total", "counter", "MTP draft tokens proposed.", double(drafts_.load()));
    metric("dsv3_spec_accepted_total", "counter", "MTP draft tokens accepted.", double(accepted_.load()));
  }
  std::lock_guard<std::mutex> g(metrics_.m);
  auto summary = [&](const char* name, const char* help, const std::deque<double>& q, double sum,
                     int64_t count) {
    char buf[256];
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " summary\n";
    const std::vector<double> v(q.begin(), q.end());
    for (double qq : {0.5, 0.9, 0.99}) {
      std::snprintf(buf, sizeof buf, "%s{quantile=\"%g\"} %.6g\n", name, qq, quantile(v, qq));
      out += buf;
    }
    std::snprintf(buf, sizeof buf, "%s_sum %.6g\n%s_count %lld\n", name, sum, name, (long long)count);
    out += buf;
  };
  summary("dsv3_request_latency_seconds",
          "Time from arrival to the last token (quantiles over the last 2048 requests).",
          metrics_.latency, metrics_.latency_sum, metrics_.latency_count);
  summary("dsv3_time_to_first_token_seconds",
          "Time from arrival to the first token (quantiles over the last 2048 requests).",
          metrics_.ttft, metrics_.ttft_sum, metrics_.ttft_count);
  out += "# HELP dsv3_http_responses_total HTTP responses by status.\n"
         "# TYPE dsv3_http_responses_total counter\n";
  for (auto [status, n] : metrics_.responses)
    out += "dsv3_http_responses_total{status=\"" + std::to_string(status) + "\"} " +
           std::to_string(n) + "\n";
  return out;
}

void Server::routes() {
  svr_.set_payload_max_length(size_t(cfg_.max_body_kb) * 1024);
  const int threads = cfg_.http_threads > 0 ? cfg_.http_threads : cfg_.max_running + cfg_.max_queue + 16;
  svr_.new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
  svr_.Post("/v1/completions", [this](const httplib::Request& q, httplib::Response& r) { completion(q, r, false); });
  svr_.Post("/v1/chat/completions", [this](const httplib::Request& q, httplib::Response& r) { completion(q, r, true); });
  svr_.Get("/v1/models", [this](const httplib::Request& q, httplib::Response& r) {
    if (!authorized(q, r)) return;
    const json m = {{"id", cfg_.served_name}, {"object", "model"}, {"created", created_},
                    {"owned_by", "dsv3"}, {"max_model_len", ctx_}};
    r.set_content(json{{"object", "list"}, {"data", json::array({m})}}.dump(), "application/json");
  });
  svr_.Get("/health", [this](const httplib::Request&, httplib::Response& r) {
    if (draining_) return send_error(r, 503, "the server is shutting down", "server_error");
    r.set_content("{\"status\":\"ok\"}", "application/json");
  });
  svr_.Get("/metrics", [this](const httplib::Request&, httplib::Response& r) {
    r.set_content(metrics_text(), "text/plain; version=0.0.4");
  });
  // errors cpp-httplib raises itself (404, 405, 413, malformed HTTP) get an OpenAI error body
  svr_.set_error_handler([](const httplib::Request& q, httplib::Response& r) {
    if (!r.body.empty()) return;
    const std::string what = r.status == 404   ? "no route " + q.method + " " + q.path
                             : r.status == 413 ? std::string("the request body is too large")
                                               : "HTTP error " + std::to_string(r.status);
    send_error(r, r.status, what, r.status == 404 ? "not_found_error" : "invalid_request_error");
  });
  svr_.set_logger([this](const httplib::Request&, const httplib::Response& r) {
    metrics_.count_status(r.status);
  });
}

void Server::run(const std::function<void(int)>& on_listening) {
  routes();
  int port = cfg_.port;
  if (port == 0) {
    port = svr_.bind_to_any_port(cfg_.host);
    DSV3_CHECK(port > 0, "cannot bind ", cfg_.host, " to any port");
  } else {
    DSV3_CHECK(svr_.bind_to_port(cfg_.host, port), "cannot bind ", cfg_.host, ":", port,
               " (in use, or not an address of this machine)");
  }
  std::thread engine([this] { engine_loop(); });
  // SIGTERM/SIGINT: stop accepting, let in-flight requests finish, then stop the listener
  g_stop = false;
  struct sigaction sa = {};
  sa.sa_handler = on_stop_signal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  std::thread watcher([this] {
    while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    draining_ = true;
    std::fprintf(stderr, "dsv3 serve: draining (%d requests in flight)\n", active_.load());
    while (active_.load() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    svr_.stop();
  });
  std::fprintf(stderr, "dsv3 serve: listening on http://%s:%d (model '%s', context %d, KV cache "
               "%d pages of %d tokens = %.1f MiB, %d running + %d queued)\n",
               cfg_.host.c_str(), port, cfg_.served_name.c_str(), ctx_, engine_->cache().pages(),
               engine_->cache().page_tokens(), double(engine_->cache().bytes()) / (1 << 20),
               cfg_.max_running, cfg_.max_queue);
  if (on_listening) on_listening(port);
  const bool ok = svr_.listen_after_bind();
  g_stop = true;  // the listener ended for another reason: let the watcher finish
  watcher.join();
  {
    std::lock_guard<std::mutex> g(inbox_m_);
    engine_stop_ = true;
  }
  inbox_cv_.notify_all();
  engine.join();
  DSV3_CHECK(ok || draining_, "the HTTP listener stopped unexpectedly");
  std::fprintf(stderr, "dsv3 serve: stopped after %lld generated tokens\n",
               (long long)gen_tokens_.load());
}

}  // namespace

void serve(const ModelWeights& w, const TextCodec& codec, const ServerConfig& cfg,
           const std::function<void(int)>& on_listening) {
  validate(cfg);
  Server s(w, codec, cfg);
  s.run(on_listening);
}

}  // namespace dsv3
