// Japanese words for every error code the service and the gateway answer (docs/api.md, "Errors").
// The English message from the server stays available, folded away, as the technical detail.
"use strict";

const ERROR_TEXT = {
  invalid_api_key: "トークンが違います。自分のパソコンで動かしている場合はサーバーの `TEXT2IMG_API_TOKEN` の値、クラウドでは `pulumi stack output token --show-secrets` の出力を入力してください。",
  auth_throttled: "間違ったトークンが続いたため、しばらく受け付けません。{wait}正しいトークンで試してください。",
  queue_full: "混み合っています。{wait}もう一度お試しください。",
  translation_failed: "翻訳サービス（Cloud Translation）が使えません。下の「英語のプロンプト」欄に英語で書けば、そのまま生成できます。",
  untranslatable_prompt: "このサービスでは翻訳が使えません。下の「英語のプロンプト」欄に英語で書いてください。",
  invalid_value: "入力に問題があります{param}。値を確かめてください。",
  missing_field: "必要な項目がありません{param}。",
  invalid_settings: "設定の値が範囲外です{param}。設定を確かめてください。",
  unsupported_size: "このモデルはそのサイズを描けません。サイズを選び直してください。",
  unsupported_parameter: "このモデルにない設定が送られました{param}。ページを再読み込みしてください。",
  invalid_json: "リクエストの形式が正しくありません。ページを再読み込みしてください。",
  missing_body: "リクエストの形式が正しくありません。ページを再読み込みしてください。",
  invalid_body: "リクエストの形式が正しくありません。ページを再読み込みしてください。",
  unsupported_response_format: "この応答形式には対応していません。",
  body_too_large: "リクエストが大きすぎます。プロンプトを短くしてください。",
  job_not_found: "ジョブが見つかりません（期限切れです）。もう一度生成してください。",
  model_failed: "モデルを読み込めませんでした。サーバーのログを確認してください。",
  gpu_out_of_memory: "GPU のメモリが足りません。枚数を減らすか、小さいサイズを選んでください。",
  shutting_down: "サーバーが停止しようとしています。少し待ってからもう一度お試しください。",
  request_timeout: "時間内に終わりませんでした。枚数かステップ数を減らしてください。",
  generation_failed: "画像の生成中にサーバーで問題が起きました。もう一度お試しください。",
  internal_error: "サーバーで問題が起きました。もう一度お試しください。",
  cancelled: "キャンセルされました。",
  client_closed_request: "接続が切れました。もう一度お試しください。",
  waking: "サーバーを起動しています。少しお待ちください。",
  asleep: "GPU サーバーは停止中です。生成すると自動で起動します。",
  start_failed: "GPU サーバーを起動できませんでした。時間をおいて試すか、管理者に詳細を伝えてください。",
  upstream_failed: "GPU サーバーとの接続が途中で切れました。もう一度お試しください。",
  upstream_unreachable: "GPU サーバーが応答しません。少し待ってからもう一度お試しください。",
  upstream_timeout: "GPU サーバーの応答が時間内に届きませんでした。枚数かステップ数を減らしてください。",
  not_found: "見つかりません。ページを再読み込みしてください。",
  bad_output: "モデルが壊れた画像（真っ黒や NaN）を出したため、結果を返しませんでした。サーバーで `text2img download --check` を実行してください。",
  body_timeout: "リクエストの送信に時間がかかりすぎました。通信環境を確かめて、もう一度お試しください。",
  header_timeout: "リクエストの送信に時間がかかりすぎました。通信環境を確かめて、もう一度お試しください。",
  invalid_encoding: "リクエストの文字コードが正しくありません（UTF-8 で送ってください）。ページを再読み込みしてください。",
  invalid_type: "入力の型が正しくありません{param}。数値は数値として送ってください。",
  model_not_found: "指定されたモデルはこのサーバーにありません。ページを再読み込みしてください。",
  invalid_path: "リクエストのパスが正しくありません。ページを再読み込みしてください。",
  invalid_http: "リクエストの形式が正しくありません。ページを再読み込みしてください。",
  headers_too_large: "リクエストのヘッダーが大きすぎます。ブラウザの Cookie を消して再読み込みしてください。",
  method_not_allowed: "このパスはその方法では使えません。ページを再読み込みしてください。",
  gateway_error: "ゲートウェイで問題が起きました。もう一度お試しください。",
};

const STATUS_TEXT = {
  400: "入力に問題があります。",
  401: "トークンが必要です。",
  404: "見つかりません。",
  413: "リクエストが大きすぎます。",
  429: "混み合っています。少し待ってからもう一度お試しください。",
  502: "サーバーとの通信に失敗しました。もう一度お試しください。",
  503: "サーバーの準備ができていません。少し待ってからもう一度お試しください。",
  504: "時間内に応答がありませんでした。もう一度お試しください。",
};

const PARAM_NAMES = {
  prompt: "プロンプト", n: "枚数", size: "サイズ", steps: "ステップ数",
  upsample_steps: "アップサンプルのステップ数", guidance_scale: "ガイダンス", seed: "シード",
  sampler: "サンプラー",
};

// {text, detail} for an error (a `command` in backticks is shown as code by app.js): Japanese for people, the server's own words for the record.
function japaneseError({ status, code, message, param, retryAfter }) {
  let text = (code && ERROR_TEXT[code]) || STATUS_TEXT[status] ||
    (status ? `エラーが発生しました（HTTP ${status}）。` : "エラーが発生しました。");
  const wait = retryAfter ? `${retryAfter} 秒ほど待ってから` : "少し待ってから";
  const served = param && window.T2I.optionLabel ? window.T2I.optionLabel(param) : null;
  const name = param ? `（${served || PARAM_NAMES[param] || param}）` : "";
  text = text.replace("{wait}", wait).replace("{param}", name);
  const detail = [code, status ? `HTTP ${status}` : "", message].filter(Boolean).join(" · ");
  return { text, detail };
}

window.T2I = Object.assign(window.T2I || {}, { japaneseError, ERROR_TEXT });
