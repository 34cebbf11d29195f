#include "check_event.hpp"

#include <fstream>
#include <iostream>
#include <sstream>

#include "mxvoip/proto/call_events.hpp"

namespace mxvoip::cli {

namespace json = boost::json;

namespace {

// Checks one event; prints its verdict under `label`. Returns whether it is valid.
bool check_one(const json::value& event, const std::string& type_option, const std::string& label,
               std::ostream& out) {
    std::string type = type_option;
    const json::value* content = &event;
    if (type.empty()) {
        const auto* obj = event.if_object();
        const json::value* t = obj ? obj->if_contains("type") : nullptr;
        content = obj ? obj->if_contains("content") : nullptr;
        if (!t || !t->is_string()) {
            out << label << ": type: is required (or give --type and pass bare content)\n";
            return false;
        }
        if (!content) {
            out << label << ": content: is required\n";
            return false;
        }
        type = std::string(t->get_string());
    }
    auto parsed = proto::parse_call_event(type, *content);
    if (!parsed.ok()) {
        out << label << ": " << parsed.error().path << ": " << parsed.error().rule << "\n";
        return false;
    }
    bool valid = true;
    for (const auto& f : proto::lint_call_event(parsed.value())) {
        bool note = f.severity == proto::LintFinding::Severity::note;
        valid &= note;
        out << label << ": " << f.path << ": " << (note ? "note: " : "") << f.rule << "\n";
    }
    if (valid) out << label << ": ok\n";
    return valid;
}

}  // namespace

int check_event(const std::vector<std::string>& inputs, const std::string& type, std::ostream& out,
                std::ostream& err) {
    bool all_valid = true;
    for (const auto& name : inputs) {
        std::stringstream text;
        if (name == "-") {
            text << std::cin.rdbuf();
        } else {
            std::ifstream in(name);
            if (!in) {
                err << "mxvoip check-event: cannot read " << name << "\n";
                return 2;
            }
            text << in.rdbuf();
        }
        std::string label = name == "-" ? "stdin" : name;
        boost::system::error_code ec;
        json::value doc = json::parse(text.str(), ec);
        if (ec) {
            out << label << ": not JSON: " << ec.message() << "\n";
            all_valid = false;
            continue;
        }
        if (doc.is_array()) {
            const auto& events = doc.get_array();
            for (std::size_t i = 0; i < events.size(); ++i)
                all_valid &= check_one(events[i], type, label + "[" + std::to_string(i) + "]", out);
        } else {
            all_valid &= check_one(doc, type, label, out);
        }
    }
    return all_valid ? 0 : 1;
}

}  // namespace mxvoip::cli
