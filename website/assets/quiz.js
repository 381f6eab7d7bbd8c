// 交互式自测题：选择题点击作答、判对错并展开解析；预测/简答题先看答案再自评；
// 页面底部计分，进度存在 localStorage（每个自测页一份）。没有 JavaScript 时页面就是普通的 <details> 答案。
(function () {
  var STORAGE_PREFIX = "minimind-notes:quiz:";
  // 界面文字跟随页面语言（英文站的 <html lang="en">）；题目内容来自页面本身
  var TEXT = {
    zh: { score: function (correct, total, done) {
            return "得分：" + correct + " / " + total + "（已完成 " + done + " 题" + (done === total ? "，全部完成）" : "）");
          },
          submit: "提交答案", show: "先想好答案，再看解析", right: "我答对了", wrong: "我答错了", reset: "清空进度，重新作答" },
    en: { score: function (correct, total, done) {
            return "Score: " + correct + " / " + total + " (" + done + " answered" + (done === total ? ", all done)" : ")");
          },
          submit: "Submit answer", show: "Think first, then show the answer", right: "I got it right",
          wrong: "I got it wrong", reset: "Clear progress and start again" }
  };
  var ui = TEXT[(document.documentElement.lang || "").slice(0, 2) === "en" ? "en" : "zh"];

  function loadState(key) {
    try { return JSON.parse(localStorage.getItem(key)) || {}; } catch (e) { return {}; }
  }
  function saveState(key, state) {
    try { localStorage.setItem(key, JSON.stringify(state)); } catch (e) { /* 隐私模式等：不保存进度 */ }
  }

  function button(text, cls) {
    var b = document.createElement("button");
    b.type = "button";
    b.className = "md-button " + cls;
    b.textContent = text;
    return b;
  }

  function setupQuiz(quiz) {
    var key = STORAGE_PREFIX + quiz.dataset.quizId;
    var state = loadState(key);            // {题号: {done, correct, wrong: [字母], picked: [字母]}}
    var questions = Array.prototype.slice.call(quiz.querySelectorAll(".quiz-question"));
    var scoreBoxes = quiz.querySelectorAll(".quiz-score");
    quiz.classList.add("quiz-interactive");

    function record(n) { return state[n] || (state[n] = { done: false, correct: false, wrong: [], picked: [] }); }

    function updateScore() {
      var done = 0, correct = 0;
      questions.forEach(function (q) {
        var r = state[q.dataset.number];
        if (r && r.done) { done += 1; if (r.correct) correct += 1; }
      });
      var text = ui.score(correct, questions.length, done);
      scoreBoxes.forEach(function (box) {
        box.querySelector(".quiz-score-text").textContent = text;
        box.dataset.correct = correct;
        box.dataset.done = done;
      });
      saveState(key, state);
    }

    function reveal(q) { q.querySelector("details.quiz-answer").open = true; }

    function paint(q) {
      var r = record(q.dataset.number);
      q.classList.toggle("quiz-done", r.done);
      q.classList.toggle("quiz-correct", r.done && r.correct);
      q.classList.toggle("quiz-incorrect", r.done && !r.correct);
      var answer = (q.dataset.answer || "").split(",");
      q.querySelectorAll(".quiz-option").forEach(function (opt) {
        var letter = opt.dataset.option;
        opt.classList.toggle("wrong", r.wrong.indexOf(letter) >= 0);
        opt.classList.toggle("right", r.done && answer.indexOf(letter) >= 0);
        opt.classList.toggle("picked", r.picked.indexOf(letter) >= 0);
        opt.setAttribute("aria-pressed", r.picked.indexOf(letter) >= 0 ? "true" : "false");
      });
      if (r.done || r.wrong.length) reveal(q);
    }

    questions.forEach(function (q) {
      var n = q.dataset.number, kind = q.dataset.kind;
      var answer = (q.dataset.answer || "").split(",");
      var options = q.querySelectorAll(".quiz-option");
      var controls = document.createElement("div");
      controls.className = "quiz-controls";
      q.querySelector("details.quiz-answer").before(controls);

      options.forEach(function (opt) {
        opt.setAttribute("role", "button");
        opt.tabIndex = 0;
        function choose() {
          var r = record(n), letter = opt.dataset.option;
          if (r.done) return;
          if (kind === "single") {
            r.picked = [letter];
            if (answer.indexOf(letter) >= 0) {
              r.done = true;
              r.correct = r.wrong.length === 0;      // 第一次就选对才计分
            } else if (r.wrong.indexOf(letter) < 0) {
              r.wrong.push(letter);
            }
          } else {                                  // multiple：切换选中，点"提交"判分
            var i = r.picked.indexOf(letter);
            if (i >= 0) r.picked.splice(i, 1); else r.picked.push(letter);
          }
          paint(q); updateScore();
        }
        opt.addEventListener("click", choose);
        opt.addEventListener("keydown", function (e) {
          if (e.key === "Enter" || e.key === " ") { e.preventDefault(); choose(); }
        });
      });

      if (kind === "multiple") {
        var submit = button(ui.submit, "quiz-submit");
        submit.addEventListener("click", function () {
          var r = record(n);
          if (r.done || r.picked.length === 0) return;
          r.done = true;
          r.wrong = r.picked.filter(function (x) { return answer.indexOf(x) < 0; });
          r.correct = r.wrong.length === 0 && answer.every(function (x) { return r.picked.indexOf(x) >= 0; });
          paint(q); updateScore();
        });
        controls.append(submit);
      } else if (kind === "predict" || kind === "short") {
        var show = button(ui.show, "quiz-show");
        var yes = button(ui.right, "quiz-self-right");
        var no = button(ui.wrong, "quiz-self-wrong");
        show.addEventListener("click", function () { reveal(q); q.classList.add("quiz-revealed"); });
        [[yes, true], [no, false]].forEach(function (pair) {
          pair[0].addEventListener("click", function () {
            var r = record(n);
            r.done = true; r.correct = pair[1];
            reveal(q); paint(q); updateScore();
          });
        });
        controls.append(show, yes, no);
      }
      paint(q);
    });

    scoreBoxes.forEach(function (box) {
      box.innerHTML = "";
      var text = document.createElement("p");
      text.className = "quiz-score-text";
      var reset = button(ui.reset, "quiz-reset");
      reset.addEventListener("click", function () {
        state = {};
        questions.forEach(function (q) {
          q.querySelector("details.quiz-answer").open = false;
          q.classList.remove("quiz-revealed");
          paint(q);
        });
        updateScore();
      });
      box.append(text, reset);
    });
    updateScore();
  }

  function init() { document.querySelectorAll(".quiz[data-quiz-id]").forEach(setupQuiz); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init); else init();
})();
