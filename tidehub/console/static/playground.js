// The playground: the model picker opens the chosen model's form at once, and the chat sends the
// conversation to /console/playground/chat and shows the answer as its events arrive (the relay's
// OpenAI-style stream). Text is put on the page as text, never as HTML.
"use strict";

(function () {
  var picker = document.getElementById("p-model");
  if (picker) {
    picker.addEventListener("change", function () { picker.form.submit(); });
  }

  var form = document.querySelector("form[data-chat]");
  if (!form) return;
  var log = document.getElementById("chat-log");
  var error = document.getElementById("chat-error");
  var send = document.getElementById("chat-send");
  var message = document.getElementById("c-message");
  var conversation = [];

  function bubble(role, text) {
    var item = document.createElement("div");
    item.className = "msg msg-" + role;
    var who = document.createElement("strong");
    who.textContent = role === "user" ? "You" : "Assistant";
    var body = document.createElement("p");
    body.textContent = text;
    item.appendChild(who);
    item.appendChild(body);
    log.appendChild(item);
    return body;
  }

  function fail(text) {
    error.textContent = text;
    log.setAttribute("data-state", "error");
  }

  var clear = document.getElementById("chat-clear");
  if (clear) {
    clear.addEventListener("click", function () {
      conversation = [];
      log.textContent = "";
      error.textContent = "";
      log.removeAttribute("data-state");
    });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var text = message.value.trim();
    if (!text) { fail("Message: is required"); return; }
    error.textContent = "";
    conversation.push({ role: "user", content: text });
    bubble("user", text);
    message.value = "";
    var answer = bubble("assistant", "");
    var data = new FormData(form);
    data.delete("message");
    data.set("messages", JSON.stringify(conversation));
    send.disabled = true;
    log.setAttribute("data-state", "streaming");
    var received = "";

    fetch(form.action, { method: "POST", body: new URLSearchParams(data), headers: { Accept: "application/json" },
                         credentials: "same-origin" })
      .then(function (response) {
        var type = response.headers.get("content-type") || "";
        if (!response.ok || type.indexOf("text/event-stream") !== 0) {
          return response.text().then(function (body) {
            var why = body;
            try { why = JSON.parse(body).error.message; } catch (e) { /* not JSON: the text itself */ }
            throw new Error(why || ("HTTP " + response.status));
          });
        }
        var reader = response.body.getReader();
        var decoder = new TextDecoder();
        var pending = "";
        function handle(chunk) {
          chunk.split("\n").forEach(function (line) {
            if (line.indexOf("data:") !== 0) return;
            var payload = line.slice(5).trim();
            if (!payload || payload === "[DONE]") return;
            var parsed;
            try { parsed = JSON.parse(payload); } catch (e) { return; }
            if (parsed.error) { fail(parsed.error.message || "the answer broke off"); return; }
            var choice = parsed.choices && parsed.choices[0];
            var delta = choice && choice.delta && choice.delta.content;
            if (delta) { received += delta; answer.textContent = received; }
          });
        }
        function pump() {
          return reader.read().then(function (step) {
            if (step.done) { if (pending) handle(pending); return; }
            pending += decoder.decode(step.value, { stream: true });
            var events = pending.split("\n\n");
            pending = events.pop();
            events.forEach(handle);
            return pump();
          });
        }
        return pump();
      })
      .then(function () {
        conversation.push({ role: "assistant", content: received });
        if (log.getAttribute("data-state") !== "error") log.setAttribute("data-state", "done");
      })
      .catch(function (e) {
        answer.parentNode.remove();
        conversation.pop();
        fail(e.message);
      })
      .then(function () { send.disabled = false; message.focus(); });
  });
})();
