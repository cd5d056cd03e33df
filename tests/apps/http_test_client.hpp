#pragma once

// Small HTTP helpers for the gateway tests: JSON requests and server-sent-event streams over a
// real loopback connection (cpp-httplib's client).

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

namespace duet::test {

struct http_answer {
  int status = 0; ///< 0 = no HTTP answer (connection failed)
  std::string body;
  httplib::Headers headers;
  nlohmann::json json() const { return nlohmann::json::parse(body); }
  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? std::string{} : it->second;
  }
};

inline httplib::Client client_for(int port) {
  httplib::Client cli{"127.0.0.1", port};
  cli.set_read_timeout(60, 0);
  cli.set_connection_timeout(30, 0); // 64 simultaneous connects on a loaded 2-core CI box
  return cli;
}

inline http_answer http_get(int port, const std::string& path,
                            const httplib::Headers& headers = {}) {
  auto cli = client_for(port);
  auto res = cli.Get(path.c_str(), headers);
  if (!res) return {};
  return {res->status, res->body, res->headers};
}

inline http_answer http_post(int port, const std::string& path, const std::string& body,
                             const httplib::Headers& headers = {}) {
  auto cli = client_for(port);
  auto res = cli.Post(path.c_str(), headers, body, "application/json");
  if (!res) return {};
  return {res->status, res->body, res->headers};
}

/// A streamed answer: the `data:` payloads of its events, in order ("[DONE]" included).
struct sse_answer {
  int status = 0;
  std::string body;              ///< the raw body (for error answers)
  std::vector<std::string> data; ///< event payloads
};

/// POSTs `body` and reads the event stream. `keep_reading(data so far)` false closes the
/// connection early (a client that goes away).
inline sse_answer
http_stream(int port, const std::string& path, const std::string& body,
            const httplib::Headers& headers = {},
            std::function<bool(const std::vector<std::string>&)> keep_reading = {}) {
  sse_answer out;
  auto cli = client_for(port);
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.headers = headers;
  req.set_header("Content-Type", "application/json");
  req.body = body;
  std::string buffer;
  req.content_receiver = [&](const char* data, std::size_t n, std::uint64_t, std::uint64_t) {
    out.body.append(data, n);
    buffer.append(data, n);
    for (std::size_t end; (end = buffer.find("\n\n")) != std::string::npos;) {
      std::string event = buffer.substr(0, end);
      buffer.erase(0, end + 2);
      if (event.rfind("data: ", 0) == 0) out.data.push_back(event.substr(6));
    }
    return !keep_reading || keep_reading(out.data);
  };
  auto res = cli.send(req);
  if (res) {
    out.status = res->status;
    if (out.body.empty()) out.body = res->body;
  }
  return out;
}

} // namespace duet::test
