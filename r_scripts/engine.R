# clusterlmer's R engine.
#
# Loaded once per R session by clusterlmer/engines/r.py (sys.source into a
# private environment). Python hands over one design and a block of responses
# (n_obs x k); everything that depends on the design alone (model frame,
# random-effects terms, fixed-effects matrix, contrast matrices) is built
# once, and each response is fitted exactly as lme4::lmer would fit it on its
# own. The Satterthwaite quantities follow lmerTest's definitions and use its
# deviance and covariance functions, fed the deviance function of the fit
# instead of one rebuilt by update().

cl_control <- function(optimizer, opt_ctrl) {
  lme4::lmerControl(optimizer = optimizer, optCtrl = opt_ctrl,
                    check.rankX = "message+drop.cols")
}

# Factors with the level order and coding chosen in Python. Reference coding
# is R's default (treatment, first level as base); the other codings are set
# on the factor itself so fixed and random-slope terms both use them.
# `coding` is one coding for every factor or a named list, one per factor.
cl_contrast <- function(levels, coding) {
  k <- length(levels)
  if (identical(coding, "effects")) {
    cm <- stats::contr.sum(levels)
    colnames(cm) <- levels[-k]
    cm
  } else if (identical(coding, "helmert")) {
    stats::contr.helmert(levels)
  } else if (identical(coding, "poly")) {
    stats::contr.poly(k)
  } else NULL
}

# `matrices` names the columns Python computed for each poly() term: they
# become one matrix variable, so the term has one label and k columns
# (name1..namek).
cl_prepare_design <- function(design, factors, coding, matrices = list()) {
  for (nm in names(matrices)) {
    cols <- as.character(matrices[[nm]])
    m <- as.matrix(design[cols])
    dimnames(m) <- list(NULL, as.character(seq_along(cols)))
    design[cols] <- NULL
    design[[nm]] <- m
  }
  for (nm in names(factors)) {
    f <- factor(as.character(design[[nm]]), levels = as.character(factors[[nm]]))
    cod <- if (is.list(coding)) as.character(coding[[nm]]) else coding
    cm <- if (nlevels(f) > 1L) cl_contrast(levels(f), cod) else NULL
    if (!is.null(cm)) contrasts(f) <- cm
    design[[nm]] <- f
  }
  design
}

# Rows of the identity per term (MATLAB's marginal test), intercept included.
cl_marginal_contrasts <- function(X, term_labels, has_intercept) {
  asgn <- attr(X, "assign")
  labels <- c("(Intercept)", term_labels)
  I <- diag(ncol(X))
  dimnames(I) <- list(colnames(X), colnames(X))
  keep <- if (has_intercept) labels else term_labels
  stats::setNames(lapply(keep, function(term) {
    idx <- match(term, labels) - 1L
    I[asgn == idx, , drop = FALSE]
  }), keep)
}

# Wald F of H0: L beta = 0 with a plain covariance (ddf residual / none).
cl_wald_F <- function(L, beta, V, rhs = 0) {
  if (nrow(L) == 0L) return(c(F = NA_real_, q = NA_real_))
  VL <- L %*% V %*% t(L)
  eig <- eigen(VL, symmetric = TRUE)
  tol <- max(sqrt(.Machine$double.eps) * eig$values[1L], 0)
  pos <- eig$values > tol
  q <- sum(pos)
  if (q == 0L) return(c(F = NA_real_, q = NA_real_))
  z <- drop(crossprod(eig$vectors[, pos, drop = FALSE], L %*% beta - rhs))
  c(F = sum(z^2 / eig$values[pos]) / q, q = q)
}

# lmerTest's Satterthwaite ingredients, computed as lmerTest:::as_lmerModLT
# does (same numDeriv calls on lmerTest's own deviance and covariance
# functions, same eigenvalue tolerance and warnings) but without building an
# S4 model object and without vcov()'s correlation matrix, which together
# cost a quarter of a fit.
cl_varpar <- function(devfun, theta, sigma, reml, tol = 1e-8) {
  varpar_opt <- unname(c(theta, sigma))
  h <- numDeriv::hessian(func = lmerTest:::devfun_vp, x = varpar_opt, devfun = devfun, reml = reml)
  eig_h <- eigen(h, symmetric = TRUE)
  evals <- eig_h$values
  neg <- evals < -tol
  zero <- evals > -tol & evals < tol
  if (any(neg)) {
    warning(sprintf("Model failed to converge with %d negative %s: %s", sum(neg),
                    if (sum(neg) > 1) "eigenvalues" else "eigenvalue",
                    paste(sprintf("%1.1e", evals[neg]), collapse = " ")), call. = FALSE)
  }
  if (any(zero)) {
    warning(sprintf("Model may not have converged with %d %s close to zero: %s", sum(zero),
                    if (sum(zero) > 1) "eigenvalues" else "eigenvalue",
                    paste(sprintf("%1.1e", evals[zero]), collapse = " ")), call. = FALSE)
  }
  pos <- evals > tol
  q <- sum(pos)
  h_inv <- eig_h$vectors[, pos, drop = FALSE] %*% diag(1 / evals[pos], nrow = q) %*%
    t(eig_h$vectors[, pos, drop = FALSE])
  Jac <- numDeriv::jacobian(func = lmerTest:::get_covbeta, x = varpar_opt, devfun = devfun)
  p <- as.integer(round(sqrt(nrow(Jac))))
  list(vcov_varpar = 2 * h_inv,
       Jac_list = lapply(seq_len(ncol(Jac)), function(i) array(Jac[, i], dim = c(p, p))))
}

cl_qform <- function(x, A) sum(x * (A %*% x))

# Satterthwaite F test of L beta = 0, following lmerTest's contestMD /
# contest1D formulas: returns c(F, NumDF, DenDF, p). Without vp (the
# statistic only) the same F comes with NA DenDF and p.
cl_satterthwaite_F <- function(L, beta, V, vp = NULL, eps = sqrt(.Machine$double.eps), rhs = 0) {
  # A right-hand side (independent rows only) shifts beta by L^+ rhs, as contestMD does.
  if (any(rhs != 0)) beta <- beta - drop(MASS::ginv(L) %*% rhs)
  one_row <- function(l) {
    var_con <- cl_qform(l, V)
    tval <- sum(l * beta) / sqrt(var_con)
    if (is.null(vp)) return(c(tval^2, 1, NA_real_, NA_real_))
    grad <- vapply(vp$Jac_list, function(J) cl_qform(l, J), numeric(1L))
    ddf <- drop(2 * var_con^2 / cl_qform(grad, vp$vcov_varpar))
    c(tval^2, 1, ddf, stats::pf(tval^2, 1, ddf, lower.tail = FALSE))
  }
  if (nrow(L) == 1L) return(one_row(drop(L)))
  eig <- eigen(L %*% V %*% t(L))
  d <- eig$values
  pos <- d > max(eps * d[1L], 0)
  q <- sum(pos)
  if (q == 0L) return(rep(NA_real_, 4L))
  PtL <- crossprod(eig$vectors, L)[seq_len(q), ]
  if (q == 1L) return(one_row(PtL))
  Fvalue <- sum(drop(PtL %*% beta)^2 / d[seq_len(q)]) / q
  if (is.null(vp)) return(c(Fvalue, q, NA_real_, NA_real_))
  nu <- vapply(seq_len(q), function(m) {
    grad <- vapply(vp$Jac_list, function(J) cl_qform(PtL[m, ], J), numeric(1L))
    2 * d[m]^2 / cl_qform(grad, vp$vcov_varpar)
  }, numeric(1L))
  ddf <- lmerTest:::get_Fstat_ddf(nu, tol = 1e-8)
  c(Fvalue, q, ddf, stats::pf(Fvalue, q, ddf, lower.tail = FALSE))
}

# lmerTest's contrasts of anova(type = 1, 2, 3): type 2 is lmerTest's default
# reading of "II" (get_contrasts_type2_unfolded: a term no other term contains
# is tested marginally).
cl_anova_contrasts <- function(m, test) {
  switch(test,
         type1 = lmerTest:::get_contrasts_type1(m),
         type2 = lmerTest:::get_contrasts_type2_unfolded(m),
         type3 = lmerTest:::get_contrasts_type3(m),
         stop("unknown test ", test))
}

# The t test of each coefficient as lmerTest's summary() reports it (get_coefmat,
# contest1D): DF and the SE the t uses. Satterthwaite: 2 V_ii^2 / (g' A g) with g
# the derivatives of V_ii; Kenward-Roger: pbkrtest's adjusted covariance (its SE)
# and Lb_ddf, the adjusted covariance computed once for every coefficient.
cl_coef_tests <- function(m, model, V, vp, ddf, resid_df) {
  p <- ncol(V)
  se <- sqrt(diag(V))
  if (identical(ddf, "satterthwaite")) {
    df <- vapply(seq_len(p), function(i) {
      grad <- vapply(vp$Jac_list, function(J) J[i, i], numeric(1L))
      2 * V[i, i]^2 / cl_qform(grad, vp$vcov_varpar)
    }, numeric(1L))
  } else if (identical(ddf, "kenward-roger")) {
    Vadj <- tryCatch(pbkrtest::vcovAdj(model), error = function(e) e)
    if (inherits(Vadj, "error")) {
      warning("Unable to compute Kenward-Roger t-tests of the coefficients: ", conditionMessage(Vadj),
              call. = FALSE)
      return(list(df = rep(NA_real_, p), se = rep(NA_real_, p)))
    }
    df <- vapply(seq_len(p), function(i) {
      L <- as.numeric(seq_len(p) == i)
      pbkrtest::Lb_ddf(L = L, V0 = stats::vcov(model), Vadj = Vadj)
    }, numeric(1L))
    se <- sqrt(diag(as.matrix(Vadj)))
  } else {
    df <- rep(if (identical(ddf, "residual")) resid_df else Inf, p)
  }
  list(df = df, se = se)
}

# lme4's C++ predictor updates theta and Lambdat in place; give every fit its
# own copies so each response starts exactly where a fresh lmer() would.
cl_fresh_reTrms <- function(reTrms) {
  reTrms$theta <- reTrms$theta + 0
  reTrms$Lambdat@x <- reTrms$Lambdat@x + 0
  reTrms
}

cl_empty_result <- function(n_terms, n_coef, k) {
  na_mat <- function(r) matrix(NA_real_, nrow = r, ncol = k)
  list(F = na_mat(n_terms), df1 = na_mat(n_terms), df2 = na_mat(n_terms),
       p = na_mat(n_terms), contrast_estimate = na_mat(n_terms), estimate = na_mat(n_coef), se = na_mat(n_coef),
       coef_df = na_mat(n_coef), coef_se = na_mat(n_coef),
       sigma = rep(NA_real_, k),
       deviance = rep(NA_real_, k),
       converged = rep(FALSE, k), singular = rep(NA_real_, k),
       messages = rep("", k), error = rep("", k))
}

# Describe the model without fitting: term labels, coefficient names and the
# number of observations, so Python can name rows before any fit succeeds.
cl_describe <- function(design, formula, response) {
  if (!response %in% names(design)) design[[response]] <- 0
  f <- stats::as.formula(formula, env = globalenv())
  fixed <- lme4::nobars(f)
  tt <- stats::terms(fixed)
  X <- stats::model.matrix(tt, stats::model.frame(tt, design))
  list(terms = c(if (attr(tt, "intercept") > 0) "(Intercept)", attr(tt, "term.labels")),
       coef_names = colnames(X),
       rank = qr(X)$rank)
}

# Response j's per-term statistics (rows F, DF1, DF2, p, one-row estimate) and
# its coefficients (at rows `rows` of the coefficient table) into `out`.
cl_store_fit <- function(out, j, stats, rows, beta, se) {
  out$F[, j] <- stats[1L, ]
  out$df1[, j] <- stats[2L, ]
  out$df2[, j] <- stats[3L, ]
  out$p[, j] <- stats[4L, ]
  out$contrast_estimate[, j] <- stats[5L, ]
  out$estimate[rows, j] <- beta
  out$se[rows, j] <- se
  out
}

# What every block of fits starts from: the coded design (first response in
# place), the rows the tables will have, and an all-NA result to fill.
# `extra` names rows after the model's terms (user contrasts).
cl_block_setup <- function(design, Y, formula, response, factors, matrices, coding, test,
                           extra = character(0)) {
  design <- cl_prepare_design(design, factors, coding, matrices)
  design[[response]] <- Y[, 1L]
  desc <- cl_describe(design, formula, response)
  term_names <- desc$terms
  # lmerTest's type I, II and III tables have no intercept row.
  if (!identical(test, "marginal")) term_names <- setdiff(term_names, "(Intercept)")
  n_terms <- length(term_names)
  term_names <- c(term_names, extra)
  out <- cl_empty_result(length(term_names), length(desc$coef_names), ncol(Y))
  out$terms <- term_names
  out$coef_names <- desc$coef_names
  out$residual_df <- NA_real_
  list(design = design, out = out, n_terms = n_terms)
}

# Fit every column of Y with the same design.
#
# Returns per-term F, DF1, DF2, p (n_terms x k), per-coefficient estimates and
# standard errors (n_coef x k, coefficient order of the full model matrix) and
# per-fit diagnostics. A fit that fails yields NA and its error message.
# need = "statistic" (permutations) leaves out the DF and p: no Satterthwaite
# derivatives, the same F; Kenward-Roger's F needs its DF and stays complete.
#
# user: named list of user contrasts, each list(L = matrix over coef_names, rhs = numeric), tested after the
# terms as lmerTest::contest(joint = TRUE) would; a contrast weighting a column lme4 dropped gives NA.
cl_fit_block <- function(design, Y, formula, response, factors, matrices = list(),
                         coding = "reference", reml = TRUE,
                         ddf = "satterthwaite", test = "marginal",
                         optimizer = "bobyqa", opt_ctrl = list(), need = "all", user = list()) {
  full <- identical(need, "all")
  Y <- as.matrix(Y)
  k <- ncol(Y)
  block <- cl_block_setup(design, Y, formula, response, factors, matrices, coding, test, names(user))
  design <- block$design
  n_terms <- block$n_terms
  term_names <- block$out$terms
  coef_names <- block$out$coef_names
  out <- block$out

  ctrl <- cl_control(optimizer, opt_ctrl)
  f <- stats::as.formula(formula, env = globalenv())

  # Design-level set-up. A failure here (e.g. a grouping factor with one
  # observation per level) concerns every response of the block.
  setup_msgs <- character(0)
  lf <- withCallingHandlers(
    tryCatch(lme4::lFormula(f, data = design, REML = reml, control = ctrl),
             error = function(e) e),
    warning = function(w) { setup_msgs <<- c(setup_msgs, conditionMessage(w)); invokeRestart("muffleWarning") },
    message = function(m) { setup_msgs <<- c(setup_msgs, trimws(conditionMessage(m))); invokeRestart("muffleMessage") })
  if (inherits(lf, "error")) {
    out$error[] <- conditionMessage(lf)
    return(out)
  }
  setup_note <- paste(setup_msgs, collapse = "; ")

  X <- lf$X
  coef_rows <- match(colnames(X), coef_names)
  user_L <- lapply(user, function(u) {
    L <- as.matrix(u$L)
    if (any(L[, -coef_rows] != 0)) L[0L, coef_rows, drop = FALSE] else L[, coef_rows, drop = FALSE]
  })
  user_rhs <- lapply(user, function(u) as.numeric(u$rhs))
  tt <- attr(lf$fr, "terms")
  fixed_terms <- stats::terms(lme4::nobars(f))
  L_list <- if (identical(test, "marginal")) {
    cl_marginal_contrasts(X, attr(fixed_terms, "term.labels"), attr(fixed_terms, "intercept") > 0)
  } else NULL
  rcol <- attr(tt, "response")
  fr <- lf$fr
  mc <- call("lmer", formula = f, REML = reml)
  resid_df <- nrow(X) - ncol(X)

  for (j in seq_len(k)) {
    msgs <- character(0)
    note <- function(x) msgs <<- c(msgs, trimws(x))
    res <- withCallingHandlers(tryCatch({
      fr[[rcol]] <- Y[, j]
      devfun <- lme4::mkLmerDevfun(fr, X, cl_fresh_reTrms(lf$reTrms), REML = reml,
                                   start = NULL, control = ctrl)
      opt <- lme4::optimizeLmer(devfun, optimizer = ctrl$optimizer,
                                restart_edge = ctrl$restart_edge,
                                boundary.tol = ctrl$boundary.tol,
                                control = ctrl$optCtrl, start = NULL,
                                calc.derivs = ctrl$calc.derivs,
                                use.last.params = ctrl$use.last.params)
      rho <- environment(devfun)
      cc <- lme4::checkConv(attr(opt, "derivs"), opt$par, ctrl = ctrl$checkConv, lbound = rho$lower)
      m <- lme4::mkMerMod(rho, opt, lf$reTrms, fr = fr, mc = mc, lme4conv = cc)
      beta <- lme4::fixef(m)
      V <- as.matrix(stats::vcov(m, correlation = FALSE))
      vp <- NULL
      if (identical(ddf, "satterthwaite") && full) {
        vp <- cl_varpar(devfun, m@theta, stats::sigma(m), reml)
      } else if (identical(ddf, "kenward-roger")) {
        model <- lmerTest:::as_lmerModLT(m, devfun)
      }
      devfun(m@theta)  # derivatives moved the shared state; restore the optimum
      # Type I/II/III contrasts depend on the fitted X only: build them once per block.
      if (is.null(L_list)) L_list <- cl_anova_contrasts(m, test)
      stats_j <- vapply(seq_along(term_names), function(i) {
        term <- term_names[i]
        L <- if (i > n_terms) user_L[[i - n_terms]] else L_list[[term]]
        rhs <- if (i > n_terms) user_rhs[[i - n_terms]] else 0
        if (is.null(L) || nrow(L) == 0L) return(rep(NA_real_, 5L))
        # The sign of a one-row contrast gives the signed t of the term.
        est <- if (nrow(L) == 1L) sum(L * beta) - rhs else NA_real_
        if (identical(ddf, "satterthwaite")) {
          c(cl_satterthwaite_F(L, beta, V, vp, rhs = rhs), est)
        } else if (identical(ddf, "kenward-roger")) {
          tab <- lmerTest::contestMD(model, L, rhs = rhs, ddf = "Kenward-Roger")
          if (nrow(tab) == 0L) return(rep(NA_real_, 5L))
          c(tab[["F value"]], tab[["NumDF"]], tab[["DenDF"]], tab[["Pr(>F)"]], est)
        } else {
          w <- cl_wald_F(L, beta, V, rhs)
          if (!full) return(c(w[["F"]], w[["q"]], NA_real_, NA_real_, est))
          df2 <- if (identical(ddf, "residual")) resid_df else Inf
          c(w[["F"]], w[["q"]], df2, stats::pf(w[["F"]], w[["q"]], df2, lower.tail = FALSE), est)
        }
      }, numeric(5L))
      coef_j <- if (full) cl_coef_tests(m, model, V, vp, ddf, resid_df) else NULL
      list(stats = stats_j, beta = beta, se = sqrt(diag(V)), coef = coef_j,
           sigma = stats::sigma(m), deviance = opt$fval,
           conv = opt$conv, singular = lme4::isSingular(m),
           lme4_msgs = unlist(cc$messages))
    }, error = function(e) e),
    warning = function(w) { note(conditionMessage(w)); invokeRestart("muffleWarning") },
    message = function(m) { note(conditionMessage(m)); invokeRestart("muffleMessage") })

    if (inherits(res, "error")) {
      out$error[j] <- conditionMessage(res)
      out$messages[j] <- paste(unique(c(setup_note[nzchar(setup_note)], msgs)), collapse = "; ")
      next
    }
    out <- cl_store_fit(out, j, res$stats, coef_rows, res$beta, res$se)
    if (!is.null(res$coef)) {
      out$coef_df[coef_rows, j] <- res$coef$df
      out$coef_se[coef_rows, j] <- res$coef$se
    }
    out$sigma[j] <- res$sigma
    out$deviance[j] <- res$deviance
    out$singular[j] <- as.numeric(res$singular)
    all_msgs <- unique(c(setup_note[nzchar(setup_note)], msgs, res$lme4_msgs))
    out$messages[j] <- paste(all_msgs, collapse = "; ")
    # Converged: the optimizer reported success and lme4's gradient check
    # raised nothing. A singular fit is a valid optimum on the boundary.
    conv_msgs <- grepl("converge", all_msgs, ignore.case = TRUE)
    out$converged[j] <- (res$conv == 0) && !any(conv_msgs)
  }
  out$residual_df <- resid_df
  out
}

# Generalized linear mixed models (lme4::glmer, Laplace approximation).
#
# Every column of Y is fitted as glmer would fit it on its own, with the
# family's canonical link and, for the binomial family, proportions as the
# response and the number of trials as prior weights (lme4's convention).
# Terms are tested by Wald chi-square on the fit's covariance of the fixed
# effects (what car::Anova(type = 3) and summary()'s z tests compute):
# F = chi2 / DF1 with DF2 = Inf, whose p equals the chi-square p; the sign of
# a one-row contrast gives the signed z.
cl_fit_glmm_block <- function(design, Y, formula, response, factors, matrices = list(),
                              coding = "reference", family = "binomial", weights = NULL,
                              test = "marginal", optimizer = "bobyqa", opt_ctrl = list(),
                              need = "all", lrt = FALSE) {
  Y <- as.matrix(Y)
  k <- ncol(Y)
  block <- cl_block_setup(design, Y, formula, response, factors, matrices, coding, test)
  design <- block$design
  term_names <- block$out$terms
  coef_names <- block$out$coef_names
  out <- block$out
  fam <- switch(family, binomial = stats::binomial(), poisson = stats::poisson())
  ctrl <- lme4::glmerControl(optimizer = optimizer, optCtrl = opt_ctrl, check.rankX = "message+drop.cols")
  f <- stats::as.formula(formula, env = globalenv())
  fixed_terms <- stats::terms(lme4::nobars(f))
  if (!is.null(weights)) design[[".cl_weights"]] <- as.numeric(design[[weights]])
  bars <- paste0("(", vapply(lme4::findbars(f), function(b) paste(deparse(b), collapse = ""), ""), ")")
  fit <- function(formula, data) {
    if (is.null(weights)) lme4::glmer(formula, data = data, family = fam, control = ctrl)
    else lme4::glmer(formula, data = data, family = fam, control = ctrl, weights = .cl_weights)
  }
  # Likelihood-ratio chi-square of a term: the full fit against one whose fixed part lacks the term's
  # columns (the same X otherwise, as one matrix variable), both by glmer; never below 0.
  lr_chisq <- function(m, X, cols, data) {
    keep <- setdiff(seq_len(ncol(X)), cols)
    data$.cl_X <- X[, keep, drop = FALSE]
    fixed <- if (length(keep)) "0 + .cl_X" else "0"
    reduced <- fit(stats::as.formula(paste(response, "~", paste(c(fixed, bars), collapse = " + ")),
                                     env = environment()), data)
    max(0, as.numeric(2 * (stats::logLik(m) - stats::logLik(reduced))))
  }
  L_list <- NULL
  for (j in seq_len(k)) {
    msgs <- character(0)
    note <- function(x) msgs <<- c(msgs, trimws(x))
    res <- withCallingHandlers(tryCatch({
      design[[response]] <- Y[, j]
      m <- fit(f, design)
      beta <- lme4::fixef(m)
      V <- as.matrix(stats::vcov(m))
      X <- lme4::getME(m, "X")
      if (is.null(L_list)) {
        L_list <- if (identical(test, "marginal")) {
          cl_marginal_contrasts(X, attr(fixed_terms, "term.labels"), attr(fixed_terms, "intercept") > 0)
        } else lmerTest:::get_contrasts_type3(m)
      }
      stats_j <- vapply(term_names, function(term) {
        L <- L_list[[term]]
        if (is.null(L) || nrow(L) == 0L) return(rep(NA_real_, 5L))
        L <- L[, colnames(X), drop = FALSE]  # columns lme4 dropped (rank) are left out
        est <- if (nrow(L) == 1L) sum(L * beta) else NA_real_
        if (lrt) {  # marginal rows only: each row of L picks one column of X
          q <- nrow(L)
          chisq <- lr_chisq(m, X, which(colSums(abs(L)) > 0), design)
          return(c(chisq / q, q, Inf, stats::pchisq(chisq, q, lower.tail = FALSE), est))
        }
        w <- cl_wald_F(L, beta, V)
        c(w[["F"]], w[["q"]], Inf, stats::pchisq(w[["F"]] * w[["q"]], w[["q"]], lower.tail = FALSE), est)
      }, numeric(5L))
      cc <- m@optinfo$conv$lme4
      list(stats = stats_j, beta = beta, se = sqrt(diag(V)), deviance = stats::deviance(m),
           conv = m@optinfo$conv$opt, singular = lme4::isSingular(m), lme4_msgs = unlist(cc$messages))
    }, error = function(e) e),
    warning = function(w) { note(conditionMessage(w)); invokeRestart("muffleWarning") },
    message = function(m) { note(conditionMessage(m)); invokeRestart("muffleMessage") })
    if (inherits(res, "error")) {
      out$error[j] <- conditionMessage(res)
      out$messages[j] <- paste(unique(msgs), collapse = "; ")
      next
    }
    rows <- match(names(res$beta), coef_names)
    out <- cl_store_fit(out, j, res$stats, rows, res$beta, res$se)
    # summary()'s Wald z of each coefficient: the normal distribution (DF = Inf).
    out$coef_se[rows, j] <- res$se
    out$coef_df[rows, j] <- Inf
    out$sigma[j] <- 1
    out$deviance[j] <- res$deviance
    out$singular[j] <- as.numeric(res$singular)
    all_msgs <- unique(c(msgs, res$lme4_msgs))
    out$messages[j] <- paste(all_msgs, collapse = "; ")
    out$converged[j] <- (res$conv == 0) && !any(grepl("converge", all_msgs, ignore.case = TRUE))
  }
  out
}
